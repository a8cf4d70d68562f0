#include "cli/config_args.h"

#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config.h"
#include "common/status.h"

namespace mp::cli {
namespace {

// Subcommands that read config files and the environment.
std::set<const CLI::App*>& Configurable() {
  static auto* set = new std::set<const CLI::App*>();
  return *set;
}
const std::set<std::string> kMetaOptions = {"help", "config", "print-config", "check-config"};

std::vector<ConfigOption> OptionsOf(CLI::App* cmd) {
  std::vector<ConfigOption> out;
  for (CLI::Option* opt : cmd->get_options()) {
    if (opt->get_lnames().empty()) continue;
    const std::string name = opt->get_lnames().front();
    if (kMetaOptions.contains(name)) continue;
    out.push_back({name, opt->get_expected_max() == 0});
  }
  return out;
}

}  // namespace

void AddConfigFlags(CLI::App* cmd, ConfigFlags* flags) {
  cmd->add_option("--config", flags->config_file,
                  "YAML file of option values (keys: the long option names); the environment "
                  "(MILLIPEDE_<OPTION>) and flags override it");
  cmd->add_flag("--print-config", flags->print, "print the effective configuration and exit");
  cmd->add_flag("--check-config", flags->check, "validate the configuration and exit");
  Configurable().insert(cmd);
}

absl::StatusOr<std::vector<std::string>> ExpandConfigArgs(CLI::App& app,
                                                          const std::vector<std::string>& argv) {
  // The subcommand: the first argument naming one (after the program and global options).
  size_t sub = 0;
  CLI::App* cmd = nullptr;
  for (size_t i = 1; i < argv.size(); ++i) {
    for (CLI::App* candidate : app.get_subcommands({})) {
      if (candidate->check_name(argv[i])) {
        cmd = candidate;
        sub = i;
        break;
      }
    }
    if (cmd != nullptr) break;
  }
  if (cmd == nullptr) return argv;
  if (!Configurable().contains(cmd)) return argv;

  const std::vector<std::string> rest(argv.begin() + sub + 1, argv.end());
  std::string config_file;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--config" && i + 1 < rest.size()) config_file = rest[i + 1];
    if (rest[i].rfind("--config=", 0) == 0) config_file = rest[i].substr(9);
  }
  const std::vector<ConfigOption> options = OptionsOf(cmd);
  ConfigValues yaml;
  if (!config_file.empty()) {
    MP_ASSIGN_OR_RETURN(yaml, ReadYamlConfig(config_file, options));
  }
  MP_ASSIGN_OR_RETURN(ConfigValues env, ReadEnvConfig(options));
  std::vector<std::string> out(argv.begin(), argv.begin() + sub + 1);
  for (std::string& a : ConfigArgs(yaml, env, OptionNamesInArgs(rest))) out.push_back(std::move(a));
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

bool HandleConfigFlags(CLI::App* cmd, const ConfigFlags& flags) {
  if (flags.print) {
    for (CLI::Option* opt : cmd->get_options()) {
      if (opt->get_lnames().empty()) continue;
      const std::string name = opt->get_lnames().front();
      if (kMetaOptions.contains(name)) continue;
      std::string value;
      if (opt->count() > 0) {
        value = opt->get_expected_max() == 0 ? (opt->as<bool>() ? "true" : "false")
                                          : absl::StrJoin(opt->results(), ", ");
        if (opt->get_expected_max() > 1) value = absl::StrCat("[", value, "]");
      } else {
        value = opt->get_expected_max() == 0 ? "false" : opt->get_default_str();
      }
      if (value.empty()) value = "\"\"";
      std::printf("%s: %s\n", name.c_str(), value.c_str());
    }
    return true;
  }
  return false;
}

}  // namespace mp::cli
