// Test driver with the command line of `millipede convert-gguf`: converts without the rest of the
// CLI, for the conversion tests.
//
//   gguf_convert_driver convert-gguf IN.gguf OUT_DIR
#include <cstdio>
#include <string>

#include "model/gguf_convert.h"

int main(int argc, char** argv) {
  if (argc != 4 || std::string(argv[1]) != "convert-gguf") {
    std::fprintf(stderr, "usage: %s convert-gguf IN.gguf OUT_DIR\n", argv[0]);
    return 2;
  }
  const absl::Status status = mp::ConvertGgufToHf(argv[2], argv[3]);
  if (!status.ok()) {
    std::fprintf(stderr, "convert-gguf: %s\n", status.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote %s\n", argv[3]);
  return 0;
}
