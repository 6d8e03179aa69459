// comm_nccl_worker: the collectives scenario over the NCCL backend, with
// CUDA tensors on device LOCAL_RANK. Built wherever CUDA + NCCL are found
// (so CI compiles the backend); run by scripts/gpu_comm_check.sh:
//   comm_nccl_worker collectives                      a world of one GPU
//   veomni-launch --nproc N -- comm_nccl_worker collectives   N GPUs
// Exits 0 with "collectives ok", 1 on a wrong value, 77 when there is no GPU
// (ctest's conventional "skipped").
#include "scenarios.hpp"

#include <cuda_runtime_api.h>

using namespace comm_test;

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "collectives";
  try {
    const comm::launch_env env = comm::read_launch_env();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::cout << "skipped: no CUDA device" << std::endl;
      return 77;
    }
    const int device = env.local_rank % devices;
    cudaSetDevice(device);
    if (scenario == "collectives")
      return collectives<comm::nccl_mesh>(env, at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
    std::cerr << "usage: comm_nccl_worker [collectives]\n";
    return 2;
  } catch (const check_failed& e) {
    std::cout << "FAILED: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << std::endl;
    return 4;
  }
}
