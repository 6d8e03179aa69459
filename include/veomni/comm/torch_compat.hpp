#pragma once
// <veomni/comm/torch_compat.hpp>: the one place that knows which LibTorch it
// is built against. Everything else in comm/ includes c10d through here.
//
//                          Debian libtorch 1.13.1        PyTorch wheel 2.x
//   ProcessGroupGloo base  c10d::ProcessGroup            c10d::Backend
//   gloo headers           libgloo-dev (/usr/include)    inside the wheel
//   reduce_scatter, flat   missing                       present since 2.1 (we
//   all_gather on Gloo                                   use our own path on both)
//   TCPStoreOptions        port/isServer/numWorkers/     + useLibUV (2.2+; a client
//                          waitWorkers/timeout           sets it false)
//   Gloo element types     no bf16, int16                build-dependent (Debian's
//                                                        2.14: no f16 either); gloo.hpp
//                                                        moves those as bytes
//   c10d::Store::clone()   absent                        pure virtual (2.8+)
//   CUDA current stream    (no CUDA build)               c10::cuda::getCurrentCUDAStream
// Both declare ProcessGroupGloo only under USE_C10D_GLOO, which the wheels'
// CMake config does not define for consumers.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

// A c10d::Store subclass defines clone() exactly when its base declares it.
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define VEOMNI_STORE_HAS_CLONE 1
#endif

#if defined(VEOMNI_TORCH_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAStream.h>
#define VEOMNI_HAS_C10_CUDA 1
#endif

namespace veomni::comm::compat {

#if defined(TORCH_VERSION_MAJOR)
inline constexpr int torch_major = TORCH_VERSION_MAJOR;
inline constexpr int torch_minor = TORCH_VERSION_MINOR;
#else
inline constexpr int torch_major = 1;  // Debian's 1.13 ships no torch/version.h
inline constexpr int torch_minor = 13;
#endif

using store_ptr = c10::intrusive_ptr<c10d::Store>;
using gloo_group_ptr = c10::intrusive_ptr<c10d::ProcessGroupGloo>;
using work_ptr = c10::intrusive_ptr<c10d::Work>;

// c10d reads a timeout of 0 as "wait forever"; never hand it one.
inline std::chrono::milliseconds positive(std::chrono::milliseconds t) {
  return t.count() > 0 ? t : std::chrono::milliseconds(1);
}

// A client of LibTorch's TCPStore: the store torchrun's agent serves when it
// says TORCHELASTIC_USE_AGENT_STORE=True. Otherwise rank 0 serves our own
// store (store.hpp), which listens on one address.
inline store_ptr make_tcp_store_client(const std::string& host, std::uint16_t port, int world_size,
                                       std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = false;
  o.numWorkers = static_cast<std::size_t>(world_size);
  o.waitWorkers = true;  // as torch.distributed does: each rank checks in
  o.timeout = positive(timeout);
  // libuv is the server's event loop; a client never uses it, but TCPStore asks
  // for it by default in 2.x and refuses where LibTorch was built without it (Debian's).
  [](auto& opts) {
    if constexpr (requires { opts.useLibUV; }) opts.useLibUV = false;
  }(o);
  return c10::make_intrusive<c10d::TCPStore>(host, o);
}

inline store_ptr make_hash_store() { return c10::make_intrusive<c10d::HashStore>(); }

inline store_ptr make_prefix_store(const std::string& prefix, store_ptr base) {
  return c10::make_intrusive<c10d::PrefixStore>(prefix, std::move(base));
}

// This host's address on its route to `host` (the local end of a connected
// UDP socket: nothing is sent), or "" when there is none.
inline std::string local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), "9", &hints, &found) != 0 || !found) return {};
  std::string out;
  for (addrinfo* a = found; a && out.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    char text[INET6_ADDRSTRLEN] = {};
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      const void* where = local.ss_family == AF_INET
                              ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(&local)->sin_addr)
                              : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&local)->sin6_addr);
      if (::inet_ntop(local.ss_family, where, text, sizeof text)) out = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return out;
}

// The Gloo transport device. On loopback it binds 127.0.0.1 so a test job
// never listens on outside interfaces; GLOO_SOCKET_IFNAME picks an interface
// (as in PyTorch); otherwise this host's address on its route to the
// rendezvous address (several hosts: the interface the others reach it by),
// or, with no such route, the device of this host's name.
inline auto gloo_device(const std::string& master_addr) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"))
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  const bool loopback = master_addr == "localhost" || master_addr == "::1" || master_addr.rfind("127.", 0) == 0;
  if (loopback) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  if (const std::string local = local_address_towards(master_addr); !local.empty())
    return c10d::ProcessGroupGloo::createDeviceForHostname(local);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

inline gloo_group_ptr make_gloo_group(store_ptr store, int rank, int size, const std::string& master_addr,
                                      std::chrono::milliseconds timeout) {
  auto o = c10d::ProcessGroupGloo::Options::create(positive(timeout));
  o->devices.push_back(gloo_device(master_addr));
  o->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(std::move(store), rank, size, o);
}

// The stream CUDA work of the caller is ordered on: torch's current stream
// when built against a CUDA LibTorch (VEOMNI_TORCH_CUDA), else the legacy
// default stream (nullptr). A cudaStream_t, as void* to keep CUDA types out.
inline void* current_cuda_stream([[maybe_unused]] int device) {
#if defined(VEOMNI_HAS_C10_CUDA)
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
#else
  return nullptr;
#endif
}

// Runs fn on the engine's thread when w completes (or fails); nothing where a
// work has no future (c10d's send/recv works).
inline void on_completion(const work_ptr& w, std::function<void()> fn) {
  if (!w) return;
  c10::intrusive_ptr<c10::ivalue::Future> f;
  try {
    f = w->getFuture();
  } catch (const std::exception&) {
    return;
  }
  if (f) f->addCallback([fn = std::move(fn)](c10::ivalue::Future&) { fn(); });
}

// The reason of an engine exception without c10's appended backtrace.
inline std::string reason(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

}  // namespace veomni::comm::compat
