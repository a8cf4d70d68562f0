// Configuration sources of the server commands: a YAML file, MILLIPEDE_* environment variables
// and command-line flags, with the precedence flags > environment > YAML > defaults.
//
// Each source is turned into command-line arguments ("--name=value") for the options it sets;
// the command then parses one argument list, so every value goes through the same validation.
// The YAML file is a mapping whose keys are the long flag names (without "--"):
//
//   listen: 0.0.0.0:50051
//   stages: 2
//   raw: true            # flags take true / false
//   worker-arg: [a, b]   # repeatable options take a sequence
//
// An unknown key is INVALID_ARGUMENT naming it and the file. The environment variable of
// option "max-new-tokens" is MILLIPEDE_MAX_NEW_TOKENS. For each option the highest-precedence
// source that sets it wins as a whole (a repeatable option is not merged across sources).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mp {

struct ConfigOption {
  std::string name;  // long name without the dashes, e.g. "max-new-tokens"
  bool is_flag = false;
};

// Option name -> its values (one for a scalar; several for a repeatable option).
using ConfigValues = std::map<std::string, std::vector<std::string>>;

inline constexpr std::string_view kEnvPrefix = "MILLIPEDE_";

// "max-new-tokens" -> "MILLIPEDE_MAX_NEW_TOKENS".
std::string EnvVarName(std::string_view option_name);

// Parses YAML text (`source` names it in errors). Values must be scalars or sequences of
// scalars; flags must be booleans.
absl::StatusOr<ConfigValues> ParseYamlConfig(std::string_view text, std::string_view source,
                                             const std::vector<ConfigOption>& options);
// Reads and parses a YAML file (NOT_FOUND when it cannot be read).
absl::StatusOr<ConfigValues> ReadYamlConfig(const std::string& path,
                                            const std::vector<ConfigOption>& options);

// The options set through environment variables. `getenv` defaults to ::getenv. A flag's
// variable must be true/false/1/0/yes/no (INVALID_ARGUMENT otherwise).
absl::StatusOr<ConfigValues> ReadEnvConfig(
    const std::vector<ConfigOption>& options,
    const std::function<std::optional<std::string>(const std::string&)>& getenv = nullptr);

// Arguments for the options that `yaml` or `env` set and the command line does not
// (`given_on_command_line` lists the names found there); env wins over yaml.
std::vector<std::string> ConfigArgs(const ConfigValues& yaml, const ConfigValues& env,
                                    const std::vector<std::string>& given_on_command_line);

// The long option names that `args` (command-line arguments) set: "--name" and "--name=v".
std::vector<std::string> OptionNamesInArgs(const std::vector<std::string>& args);

}  // namespace mp
