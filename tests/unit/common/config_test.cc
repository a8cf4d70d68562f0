// Config sources: YAML file, MILLIPEDE_* environment, flags — precedence flags > env > YAML.
#include "common/config.h"

#include <gtest/gtest.h>

#include <map>

#include "common/status_matchers.h"

namespace mp {
namespace {

const std::vector<ConfigOption> kOptions = {
    {"listen", false}, {"stages", false}, {"raw", true}, {"worker-arg", false}};

TEST(ConfigTest, EnvVarNames) {
  EXPECT_EQ(EnvVarName("max-new-tokens"), "MILLIPEDE_MAX_NEW_TOKENS");
  EXPECT_EQ(EnvVarName("listen"), "MILLIPEDE_LISTEN");
}

TEST(ConfigTest, ParsesScalarsSequencesAndFlags) {
  MP_ASSERT_OK_AND_ASSIGN(ConfigValues v,
                          ParseYamlConfig("listen: 0.0.0.0:50051\nstages: 3\nraw: yes\n"
                                          "worker-arg: [--a, --b=1]\n",
                                          "c.yaml", kOptions));
  EXPECT_EQ(v["listen"], std::vector<std::string>{"0.0.0.0:50051"});
  EXPECT_EQ(v["stages"], std::vector<std::string>{"3"});
  EXPECT_EQ(v["raw"], std::vector<std::string>{"true"});
  EXPECT_EQ(v["worker-arg"], (std::vector<std::string>{"--a", "--b=1"}));
  MP_ASSERT_OK_AND_ASSIGN(ConfigValues empty, ParseYamlConfig("", "e.yaml", kOptions));
  EXPECT_TRUE(empty.empty());
}

TEST(ConfigTest, RejectsUnknownKeysAndBadValues) {
  const auto bad = absl::StatusCode::kInvalidArgument;
  MP_EXPECT_ERROR(ParseYamlConfig("lisen: x\n", "c.yaml", kOptions), bad,
                  "c.yaml: unknown option 'lisen'");
  MP_EXPECT_ERROR(ParseYamlConfig("- a\n- b\n", "c.yaml", kOptions), bad, "mapping");
  MP_EXPECT_ERROR(ParseYamlConfig("raw: maybe\n", "c.yaml", kOptions), bad,
                  "flag 'raw' must be true or false");
  MP_EXPECT_ERROR(ParseYamlConfig("listen: {a: 1}\n", "c.yaml", kOptions), bad, "option 'listen'");
  MP_EXPECT_ERROR(ParseYamlConfig("listen: [a, b\n", "c.yaml", kOptions), bad, "not valid YAML");
  MP_EXPECT_ERROR(ReadYamlConfig("/nonexistent/c.yaml", kOptions), absl::StatusCode::kNotFound,
                  "/nonexistent/c.yaml");
}

TEST(ConfigTest, EnvironmentOverridesYamlAndFlagsOverrideBoth) {
  std::map<std::string, std::string> env = {
      {"MILLIPEDE_STAGES", "4"}, {"MILLIPEDE_RAW", "0"}, {"MILLIPEDE_UNRELATED", "x"}};
  auto getenv = [&](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  MP_ASSERT_OK_AND_ASSIGN(ConfigValues from_env, ReadEnvConfig(kOptions, getenv));
  EXPECT_EQ(from_env["stages"], std::vector<std::string>{"4"});
  EXPECT_EQ(from_env["raw"], std::vector<std::string>{"false"});
  MP_ASSERT_OK_AND_ASSIGN(ConfigValues yaml,
                          ParseYamlConfig("listen: a:1\nstages: 2\nraw: true\n", "c", kOptions));
  const std::vector<std::string> argv = {"--listen=b:2", "--worker-arg", "x"};
  const std::vector<std::string> args = ConfigArgs(yaml, from_env, OptionNamesInArgs(argv));
  // listen comes from the command line (left out here); stages and raw from the environment.
  EXPECT_EQ(args, (std::vector<std::string>{"--raw=false", "--stages=4"}));

  env["MILLIPEDE_RAW"] = "perhaps";
  MP_EXPECT_ERROR(ReadEnvConfig(kOptions, getenv), absl::StatusCode::kInvalidArgument,
                  "MILLIPEDE_RAW must be true or false");
}

TEST(ConfigTest, OptionNamesInArgs) {
  EXPECT_EQ(OptionNamesInArgs({"--a", "1", "--b=2", "-c", "x", "--", "--d"}),
            (std::vector<std::string>{"a", "b"}));
}

}  // namespace
}  // namespace mp
