// millipede convert-gguf IN.gguf OUT_DIR
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "model/gguf_convert.h"

namespace mp::cli {

void RegisterConvertGgufCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "convert-gguf", "Convert a GGUF model (llama architecture) into a Hugging Face directory");
  auto in = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("input", *in, "GGUF file")->required();
  cmd->add_option("output", *out, "output directory (created)")->required();
  cmd->callback([in, out, exit_code] {
    absl::Status status = ConvertGgufToHf(*in, *out);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede convert-gguf: %s\n", status.ToString().c_str());
      *exit_code = 1;
      return;
    }
    std::fprintf(stderr, "wrote %s\n", out->c_str());
  });
}

}  // namespace mp::cli
