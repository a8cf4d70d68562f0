// millipede: one binary, one subcommand per role (see ARCHITECTURE.md §1).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/config_args.h"
#include "common/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"Millipede: million-token prefill on a cluster of GPUs", "millipede"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "millipede 0.1.0");
  std::string log_level = "info";
  CLI::Option* log_option =
      app.add_option("--log-level", log_level,
                     "debug, info, warning or error (default: $MILLIPEDE_LOG_LEVEL, else info)")
          ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
  int exit_code = 0;
  mp::cli::RegisterRunCommand(app, &exit_code);
  mp::cli::RegisterConvertGgufCommand(app, &exit_code);
  mp::cli::RegisterCoordinatorCommand(app, &exit_code);
  mp::cli::RegisterWorkerCommand(app, &exit_code);
  mp::cli::RegisterLocalCommand(app, &exit_code);
  mp::cli::RegisterGenerateCommand(app, &exit_code);
  mp::cli::RegisterRefineSparsityCommand(app, &exit_code);
  app.parse_complete_callback([&] {
    mp::LogLevel level;
    if (log_option->count() > 0 && mp::ParseLogLevel(log_level, &level)) mp::SetLogLevel(level);
  });
  // Server subcommands also read --config YAML and MILLIPEDE_* variables (cli/config_args.h).
  absl::StatusOr<std::vector<std::string>> args =
      mp::cli::ExpandConfigArgs(app, std::vector<std::string>(argv, argv + argc));
  if (!args.ok()) {
    std::fprintf(stderr, "millipede: %s\n", args.status().ToString().c_str());
    return 2;
  }
  std::vector<char*> cargs;
  for (std::string& a : *args) cargs.push_back(a.data());
  try {
    app.parse(static_cast<int>(cargs.size()), cargs.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
