// millipede: one binary, one subcommand per role (see ARCHITECTURE.md §1).
#include <cstdio>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "common/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"Millipede: million-token prefill on a cluster of GPUs", "millipede"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "millipede 0.1.0");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warning or error")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
  int exit_code = 0;
  mp::cli::RegisterRunCommand(app, &exit_code);
  mp::cli::RegisterConvertGgufCommand(app, &exit_code);
  app.parse_complete_callback([&] {
    mp::LogLevel level;
    if (mp::ParseLogLevel(log_level, &level)) mp::SetLogLevel(level);
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
