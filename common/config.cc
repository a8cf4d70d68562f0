#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace mp {
namespace {

const ConfigOption* Find(const std::vector<ConfigOption>& options, const std::string& name) {
  for (const ConfigOption& o : options) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

std::optional<std::string> NormalizeBool(std::string value) {
  value = absl::AsciiStrToLower(value);
  if (value == "true" || value == "1" || value == "yes" || value == "on") return "true";
  if (value == "false" || value == "0" || value == "no" || value == "off") return "false";
  return std::nullopt;
}

}  // namespace

std::string EnvVarName(std::string_view option_name) {
  std::string out(kEnvPrefix);
  for (char c : option_name) {
    out.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out;
}

absl::StatusOr<ConfigValues> ParseYamlConfig(std::string_view text, std::string_view source,
                                             const std::vector<ConfigOption>& options) {
  const std::string src(source);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": not valid YAML: ", e.what()));
  }
  ConfigValues values;
  if (root.IsNull()) return values;
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": the config must be a mapping of option names to values"));
  }
  for (const auto& entry : root) {
    if (!entry.first.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(src, ": keys must be option names"));
    }
    const std::string key = entry.first.as<std::string>();
    const ConfigOption* option = Find(options, key);
    if (option == nullptr) {
      std::string known;
      for (const ConfigOption& o : options)
        absl::StrAppend(&known, known.empty() ? "" : ", ", o.name);
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": unknown option '", key, "' (known: ", known, ")"));
    }
    std::vector<std::string> items;
    const YAML::Node& value = entry.second;
    if (value.IsScalar()) {
      items.push_back(value.as<std::string>());
    } else if (value.IsSequence()) {
      for (const auto& item : value) {
        if (!item.IsScalar()) {
          return absl::InvalidArgumentError(
              absl::StrCat(src, ": option '", key, "' must hold scalars"));
        }
        items.push_back(item.as<std::string>());
      }
    } else if (value.IsNull()) {
      continue;  // "key:" with nothing: leave the default
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": option '", key, "' must be a scalar or a sequence of scalars"));
    }
    if (option->is_flag) {
      if (items.size() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(src, ": flag '", key, "' takes one value, true or false"));
      }
      std::optional<std::string> b = NormalizeBool(items[0]);
      if (!b) {
        return absl::InvalidArgumentError(
            absl::StrCat(src, ": flag '", key, "' must be true or false, got '", items[0], "'"));
      }
      items[0] = *b;
    }
    values[key] = std::move(items);
  }
  return values;
}

absl::StatusOr<ConfigValues> ReadYamlConfig(const std::string& path,
                                            const std::vector<ConfigOption>& options) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ParseYamlConfig(ss.str(), path, options);
}

absl::StatusOr<ConfigValues> ReadEnvConfig(
    const std::vector<ConfigOption>& options,
    const std::function<std::optional<std::string>(const std::string&)>& getenv_fn) {
  ConfigValues values;
  for (const ConfigOption& o : options) {
    const std::string var = EnvVarName(o.name);
    std::optional<std::string> value;
    if (getenv_fn) {
      value = getenv_fn(var);
    } else if (const char* v = std::getenv(var.c_str())) {
      value = std::string(v);
    }
    if (!value) continue;
    if (o.is_flag) {
      std::optional<std::string> b = NormalizeBool(*value);
      if (!b) {
        return absl::InvalidArgumentError(
            absl::StrCat(var, " must be true or false, got '", *value, "'"));
      }
      value = b;
    }
    values[o.name] = {*value};
  }
  return values;
}

std::vector<std::string> ConfigArgs(const ConfigValues& yaml, const ConfigValues& env,
                                    const std::vector<std::string>& given_on_command_line) {
  const std::set<std::string> given(given_on_command_line.begin(), given_on_command_line.end());
  ConfigValues merged = yaml;
  for (const auto& [name, items] : env) merged[name] = items;
  std::vector<std::string> args;
  for (const auto& [name, items] : merged) {
    if (given.contains(name)) continue;
    for (const std::string& item : items) args.push_back(absl::StrCat("--", name, "=", item));
  }
  return args;
}

std::vector<std::string> OptionNamesInArgs(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  for (const std::string& a : args) {
    if (a == "--") break;
    if (a.size() < 3 || a[0] != '-' || a[1] != '-') continue;
    const size_t eq = a.find('=');
    names.push_back(a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2));
  }
  return names;
}

}  // namespace mp
