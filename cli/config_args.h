// Config files and MILLIPEDE_* environment variables for the server subcommands (see
// common/config.h for the precedence): --config FILE, --print-config (print the effective
// configuration as YAML and exit), --check-config (validate and exit).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mp::cli {

struct ConfigFlags {
  std::string config_file;
  bool print = false;
  bool check = false;
};

// Adds the three options to `cmd` and marks it as reading config files and the environment.
void AddConfigFlags(CLI::App* cmd, ConfigFlags* flags);

// `argv` with the subcommand's YAML- and environment-derived options inserted right after the
// subcommand name (unchanged when the subcommand does not read them).
absl::StatusOr<std::vector<std::string>> ExpandConfigArgs(CLI::App& app,
                                                          const std::vector<std::string>& argv);

// When --print-config was given, prints the configuration and returns true: the command must
// not run. (--check-config is up to the command: it validates what it can without serving.)
bool HandleConfigFlags(CLI::App* cmd, const ConfigFlags& flags);

}  // namespace mp::cli
