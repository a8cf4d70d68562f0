// Subcommands of the `millipede` binary. Each Register* function adds one CLI11 subcommand whose
// callback runs the command and stores its process exit code in *exit_code.
#pragma once

#include <CLI/CLI.hpp>

namespace mp::cli {

void RegisterRunCommand(CLI::App& app, int* exit_code);
void RegisterConvertGgufCommand(CLI::App& app, int* exit_code);
void RegisterCoordinatorCommand(CLI::App& app, int* exit_code);
void RegisterWorkerCommand(CLI::App& app, int* exit_code);
void RegisterLocalCommand(CLI::App& app, int* exit_code);
void RegisterGenerateCommand(CLI::App& app, int* exit_code);
void RegisterRefineSparsityCommand(CLI::App& app, int* exit_code);

}  // namespace mp::cli
