// A TorchScript module frozen and optimised for inference (torch::jit::optimize_for_inference),
// which tch does not expose. Freezing inlines the weights, folds batch norm into the
// convolutions and fuses what follows them; on the CPU the convolutions then run in oneDNN's
// blocked layout from one to the next. The result holds oneDNN tensors as constants and cannot
// be saved, so it is made at load, from the file, and run here.
//
// No C++ exception crosses into Rust: each function catches and hands back a message, which
// the caller frees with motion_optimised_free_error.

#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

char *copy_message(const std::string &message) {
    char *out = static_cast<char *>(std::malloc(message.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, message.c_str(), message.size() + 1);
    }
    return out;
}

}  // namespace

extern "C" {

// Loads `path` on the CPU, in eval mode, frozen and optimised; null with `*error` set on failure.
void *motion_optimised_load(const char *path, char **error) {
    try {
        torch::jit::Module module = torch::jit::load(path, torch::kCPU);
        module.eval();
        torch::jit::Module optimised = torch::jit::optimize_for_inference(module);
        return new torch::jit::Module(std::move(optimised));
    } catch (const std::exception &e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown error");
    }
    return nullptr;
}

// Runs `forward` on one tensor (tch's tensor pointer) and returns a new tensor that tch takes
// ownership of; null with `*error` set on failure or when forward does not return a tensor.
torch::Tensor *motion_optimised_forward(void *module, const torch::Tensor *input, char **error) {
    try {
        torch::NoGradGuard no_grad;
        auto *m = static_cast<torch::jit::Module *>(module);
        torch::jit::IValue output = m->forward({*input});
        if (!output.isTensor()) {
            *error = copy_message("the model's forward returned " + output.tagKind() + ", not a tensor");
            return nullptr;
        }
        return new torch::Tensor(output.toTensor());
    } catch (const std::exception &e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown error");
    }
    return nullptr;
}

void motion_optimised_free(void *module) {
    delete static_cast<torch::jit::Module *>(module);
}

void motion_optimised_free_error(char *error) {
    std::free(error);
}

}  // extern "C"
