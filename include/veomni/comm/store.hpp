#pragma once
// <veomni/comm/store.hpp>: the key-value store ranks meet at, ours and
// torch-free: rank 0 runs a store_server bound to ONE address, every rank
// (rank 0 too) talks to it through a store_client. rendezvous.hpp puts the
// c10d::Store face on it. (LibTorch 1.13's TCPStore cannot be told where to
// listen: its server takes every interface.)
//
//   store_server server("127.0.0.1", 29500);         // listens on 127.0.0.1:29500 only
//   store_client c("127.0.0.1", 29500, 5s);          // connects, retrying up to 5 s
//   c.set("a", "1");  c.add("n", 2);  c.wait({"b"}); // wait: until b is set, or 5 s
//
// Protocol. Every message is a frame: a u32 length, then the body; integers
// are big-endian, a string is a u32 length and its bytes, a key list is a u32
// count and its strings. A request body is an op byte and its fields; a reply
// body is a status byte (ok, missing, error: a message follows) and fields:
//   set  key value      -> ok                 erase key    -> ok u8 existed
//   get  key            -> ok value | missing check keys   -> ok u8 all_set
//   add  key i64        -> ok i64 (the value is kept as decimal text, as c10d does)
//   compare_set key expected desired -> ok value now (c10d's rule)
//   count               -> ok i64 keys         wait  keys   -> ok, once all are set
// A client sends one request at a time; the server parks a wait until the
// keys exist. Timeouts are the client's: past its deadline it throws
// comm_error naming the op, the keys and the timeout, and drops the
// connection (the server forgets a parked wait when its socket closes); the
// next call reconnects. A timeout of 0 waits forever (c10d's kNoTimeout).
//
// The server is one thread around poll(): a listening socket, non-blocking
// peers with their own input and output buffers, and a pipe that stops it.
// A peer that closes, or sends a malformed or oversized frame (over 64 MiB),
// is dropped; the others go on. Destruction stops the thread and closes every
// socket without waiting on any peer.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "error.hpp"

namespace veomni::comm {

namespace detail {

enum class store_op : std::uint8_t { set = 1, get, add, compare_set, erase, check, count, wait };
enum class store_status : std::uint8_t { ok = 0, missing, error };
inline constexpr std::size_t max_store_frame = std::size_t{64} << 20;

using store_clock = std::chrono::steady_clock;

// Now + timeout; a timeout of 0 never ends.
inline store_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  return timeout.count() > 0 ? store_clock::now() + timeout : store_clock::time_point::max();
}

// poll()'s timeout until `deadline`: -1 for none, else milliseconds, rounded up.
inline int poll_ms(store_clock::time_point deadline) {
  if (deadline == store_clock::time_point::max()) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - store_clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, INT_MAX));
}

inline std::string errno_text(int e = errno) { return std::strerror(e); }

struct store_frame_writer {
  std::string bytes = std::string(4, '\0');  // the length, filled in by frame()

  store_frame_writer& uint(std::uint64_t v, int width) {
    for (int s = 8 * (width - 1); s >= 0; s -= 8) bytes.push_back(static_cast<char>((v >> s) & 0xff));
    return *this;
  }
  store_frame_writer& u8(std::uint8_t v) { return uint(v, 1); }
  store_frame_writer& op(store_op o) { return u8(static_cast<std::uint8_t>(o)); }
  store_frame_writer& i64(std::int64_t v) { return uint(static_cast<std::uint64_t>(v), 8); }
  store_frame_writer& str(std::string_view s) {
    uint(s.size(), 4);
    bytes.append(s);
    return *this;
  }
  store_frame_writer& strs(const std::vector<std::string>& v) {
    uint(v.size(), 4);
    for (const auto& s : v) str(s);
    return *this;
  }
  std::string frame() {
    const std::uint64_t n = bytes.size() - 4;
    for (int i = 0; i < 4; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((n >> (24 - 8 * i)) & 0xff);
    return std::move(bytes);
  }
};

struct malformed_store_frame : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct store_frame_reader {
  std::string_view rest;

  std::string_view take(std::uint64_t n) {
    if (n > rest.size()) throw malformed_store_frame("short frame");
    const auto s = rest.substr(0, n);
    rest.remove_prefix(n);
    return s;
  }
  std::uint64_t uint(int width) {
    std::uint64_t v = 0;
    for (unsigned char c : take(static_cast<std::uint64_t>(width))) v = v << 8 | c;
    return v;
  }
  std::uint8_t u8() { return static_cast<std::uint8_t>(uint(1)); }
  std::int64_t i64() { return static_cast<std::int64_t>(uint(8)); }
  std::string str() { return std::string(take(uint(4))); }
  std::vector<std::string> strs() {
    const std::uint64_t n = uint(4);
    if (n > rest.size() / 4) throw malformed_store_frame("key count past the frame");
    std::vector<std::string> v;
    for (std::uint64_t i = 0; i < n; ++i) v.push_back(str());
    return v;
  }
};

// The length of the complete frame at the front of `buffer`, if there is one.
inline std::optional<std::size_t> complete_frame(const std::string& buffer) {
  if (buffer.size() < 4) return std::nullopt;
  const std::uint64_t n = store_frame_reader{std::string_view(buffer).substr(0, 4)}.uint(4);
  if (n > max_store_frame) throw malformed_store_frame("frame of " + std::to_string(n) + " bytes");
  if (buffer.size() < 4 + n) return std::nullopt;
  return static_cast<std::size_t>(n);
}

struct unique_fd {
  int fd = -1;
  unique_fd() = default;
  explicit unique_fd(int f) : fd(f) {}
  unique_fd(unique_fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  void reset(int f = -1) {
    if (fd >= 0) ::close(fd);
    fd = f;
  }
  explicit operator bool() const { return fd >= 0; }
};

struct socket_address {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = 0;
};

// TCP addresses of `host` ("[::1]" as "::1"), IPv4 first, so that
// "localhost" means 127.0.0.1 to the server and to its clients alike.
inline std::vector<socket_address> resolve(std::string host, std::uint16_t port, std::string& why) {
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0) {
    why = ::gai_strerror(rc);
    return {};
  }
  std::vector<socket_address> out;
  for (const addrinfo* a = found; a; a = a->ai_next) {
    socket_address s;
    std::memcpy(&s.addr, a->ai_addr, a->ai_addrlen);
    s.len = a->ai_addrlen;
    s.family = a->ai_family;
    out.push_back(s);
  }
  ::freeaddrinfo(found);
  std::stable_partition(out.begin(), out.end(), [](const socket_address& s) { return s.family == AF_INET; });
  return out;
}

inline std::string quoted_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < 4; ++i) out += (i ? ", '" : "'") + keys[i] + "'";
  if (keys.size() > 4) out += " and " + std::to_string(keys.size() - 4) + " more";
  return out;
}

}  // namespace detail

// Rank 0's server. Binds host:port (port 0: a free one, see port()) and
// serves from its own thread until destroyed; throws comm_error
// "veomni::comm::store_server: cannot listen on H:P: <reason>" when the
// address is not this host's or the port is taken.
class store_server {
 public:
  store_server(const std::string& host, std::uint16_t port) {
    std::string why = "no address";
    for (const auto& a : detail::resolve(host, port, why)) {
      detail::unique_fd fd(::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      const int one = 1;
      if (fd && ::setsockopt(fd.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
          ::bind(fd.fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) == 0 && ::listen(fd.fd, SOMAXCONN) == 0) {
        listener_ = std::move(fd);
        break;
      }
      why = detail::errno_text();
    }
    if (!listener_)
      throw comm_error("veomni::comm::store_server: cannot listen on " + host + ":" + std::to_string(port) + ": " + why);
    int p[2];
    if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
      throw comm_error("veomni::comm::store_server: pipe: " + detail::errno_text());
    stop_read_.reset(p[0]);
    stop_write_.reset(p[1]);
    thread_ = std::thread([this] { serve(); });
  }

  store_server(const store_server&) = delete;
  store_server& operator=(const store_server&) = delete;

  ~store_server() {
    [[maybe_unused]] const auto n = ::write(stop_write_.fd, "x", 1);
    thread_.join();
  }

  // The port it listens on (the kernel's choice when constructed with 0).
  std::uint16_t port() const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    ::getsockname(listener_.fd, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(a).sin6_port
                                         : reinterpret_cast<const sockaddr_in&>(a).sin_port);
  }

 private:
  struct peer {
    detail::unique_fd fd;
    std::string in, out;
    std::vector<std::string> waiting;  // the keys of a parked wait
    bool parked = false;
    bool dead = false;
  };

  void serve() {
    std::vector<pollfd> fds;
    bool backlog = false;  // a peer unparked late in a pass has a request buffered
    for (;;) {
      fds.assign({{stop_read_.fd, POLLIN, 0}, {listener_.fd, POLLIN, 0}});
      for (const auto& p : peers_)
        fds.push_back({p->fd.fd, static_cast<short>(POLLIN | (p->out.empty() ? 0 : POLLOUT)), 0});
      if (::poll(fds.data(), fds.size(), backlog ? 0 : -1) < 0 && errno != EINTR) return;
      if (fds[0].revents) return;
      for (std::size_t i = 0; i < peers_.size(); ++i)
        if (fds[i + 2].revents & (POLLIN | POLLHUP | POLLERR)) receive(*peers_[i]);
      if (fds[1].revents & POLLIN) accept_all();
      for (auto& p : peers_) handle_frames(*p);
      backlog = false;
      for (auto& p : peers_) {
        flush(*p);
        if (!p->dead && !p->parked) backlog = backlog || has_frame(*p);
      }
      std::erase_if(peers_, [](const auto& p) { return p->dead; });
    }
  }

  void accept_all() {
    for (;;) {
      detail::unique_fd fd(::accept4(listener_.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) return;  // EAGAIN, or a connection that went away before we took it
      const int one = 1;
      ::setsockopt(fd.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      peers_.push_back(std::make_unique<peer>());
      peers_.back()->fd = std::move(fd);
    }
  }

  static void receive(peer& p) {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(p.fd.fd, buf, sizeof buf);
      if (n > 0) {
        p.in.append(buf, static_cast<std::size_t>(n));
        if (p.in.size() > detail::max_store_frame + 4) p.dead = true;
        if (p.dead) return;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) p.dead = true;
      return;
    }
  }

  static void flush(peer& p) {
    while (!p.dead && !p.out.empty()) {
      const ssize_t n = ::send(p.fd.fd, p.out.data(), p.out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        p.out.erase(0, static_cast<std::size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) p.dead = true;
        return;
      }
    }
  }

  static bool has_frame(const peer& p) {
    try {
      return detail::complete_frame(p.in).has_value();
    } catch (const detail::malformed_store_frame&) {
      return true;  // handle_frames drops it
    }
  }

  // Serves every complete request of `p` until it parks; drops a peer whose
  // bytes do not parse (or whose request cannot be served: memory).
  void handle_frames(peer& p) {
    try {
      while (!p.dead && !p.parked) {
        const auto n = detail::complete_frame(p.in);
        if (!n) return;
        detail::store_frame_reader r{std::string_view(p.in).substr(4, *n)};
        p.out += handle(p, r);
        p.in.erase(0, 4 + *n);
      }
    } catch (const std::exception&) {
      p.dead = true;
    }
  }

  bool all_set(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const auto& k) { return data_.count(k) > 0; });
  }

  // A reply frame, or "" for a wait that parks.
  std::string handle(peer& p, detail::store_frame_reader& r) {
    using detail::store_op;
    auto reply = [](detail::store_status s = detail::store_status::ok) {
      return detail::store_frame_writer{}.u8(static_cast<std::uint8_t>(s));
    };
    const auto op = static_cast<store_op>(r.u8());
    switch (op) {
      case store_op::set: {
        std::string key = r.str();
        data_[std::move(key)] = r.str();
        wake();
        return reply().frame();
      }
      case store_op::get: {
        const auto it = data_.find(r.str());
        if (it == data_.end()) return reply(detail::store_status::missing).frame();
        return reply().str(it->second).frame();
      }
      case store_op::add: {
        std::string key = r.str();
        const std::int64_t delta = r.i64();
        std::int64_t now = 0;
        if (const auto it = data_.find(key); it != data_.end()) {
          const auto& v = it->second;
          const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), now);
          if (ec != std::errc{} || end != v.data() + v.size())
            return reply(detail::store_status::error).str("the value '" + v + "' is not an integer").frame();
        }
        now += delta;
        data_[std::move(key)] = std::to_string(now);
        wake();
        return reply().i64(now).frame();
      }
      case store_op::compare_set: {
        // c10d's rule: an absent key is set only when `expected` is empty;
        // the reply is the value now (or `expected` when absent and not set).
        std::string key = r.str(), expected = r.str(), desired = r.str();
        const auto it = data_.find(key);
        if (it == data_.end()) {
          if (!expected.empty()) return reply().str(expected).frame();
          data_[std::move(key)] = desired;
          wake();
          return reply().str(desired).frame();
        }
        if (it->second == expected) {
          it->second = std::move(desired);
          wake();
        }
        return reply().str(it->second).frame();
      }
      case store_op::erase:
        return reply().u8(data_.erase(r.str()) > 0).frame();
      case store_op::check:
        return reply().u8(all_set(r.strs())).frame();
      case store_op::count:
        return reply().i64(static_cast<std::int64_t>(data_.size())).frame();
      case store_op::wait: {
        auto keys = r.strs();
        if (all_set(keys)) return reply().frame();
        p.waiting = std::move(keys);
        p.parked = true;
        return {};
      }
    }
    throw detail::malformed_store_frame("unknown op");
  }

  // Answers the parked waits whose keys are all set now.
  void wake() {
    for (auto& q : peers_) {
      if (!q->parked || !all_set(q->waiting)) continue;
      q->parked = false;
      q->waiting.clear();
      q->out += detail::store_frame_writer{}.u8(static_cast<std::uint8_t>(detail::store_status::ok)).frame();
    }
  }

  detail::unique_fd listener_, stop_read_, stop_write_;
  std::vector<std::unique_ptr<peer>> peers_;
  std::map<std::string, std::string> data_;
  std::thread thread_;
};

// One connection to a store_server; thread-safe (one request at a time).
// Every call has the client's timeout (0: none) unless given its own; its
// failures throw comm_error, e.g.
//   "veomni::comm::store: wait for 'veomni/group/0,1/rank_1' timed out after 5000 ms (store at 127.0.0.1:29500)"
class store_client {
 public:
  // Connects, retrying (the server may not be up yet) until the timeout.
  store_client(std::string host, std::uint16_t port, std::chrono::milliseconds timeout)
      : host_(std::move(host)), port_(port), timeout_(timeout) {
    std::lock_guard lock(mutex_);
    connect(detail::deadline_after(timeout_), timeout_);
  }

  const std::string& host() const { return host_; }
  std::uint16_t port() const { return port_; }
  std::chrono::milliseconds timeout() const {
    std::lock_guard lock(mutex_);
    return timeout_;
  }
  void set_timeout(std::chrono::milliseconds t) {
    std::lock_guard lock(mutex_);
    timeout_ = t;
  }

  void set(const std::string& key, std::string_view value) {
    call("set of '" + key + "'", request(detail::store_op::set).str(key).str(value));
  }

  // Waits for the key (up to the timeout), then returns its value.
  std::string get(const std::string& key) {
    const std::string what = "get of '" + key + "'";
    wait_for(what, {key}, timeout());
    auto [status, body] = call(what, request(detail::store_op::get).str(key));
    if (status == detail::store_status::missing) throw comm_error(prefix + what + ": the key was deleted while read");
    return detail::store_frame_reader{body}.str();
  }

  std::int64_t add(const std::string& key, std::int64_t delta) {
    auto [status, body] = call("add to '" + key + "'", request(detail::store_op::add).str(key).i64(delta));
    return detail::store_frame_reader{body}.i64();
  }

  std::string compare_set(const std::string& key, std::string_view expected, std::string_view desired) {
    auto [status, body] =
        call("compare_set of '" + key + "'", request(detail::store_op::compare_set).str(key).str(expected).str(desired));
    return detail::store_frame_reader{body}.str();
  }

  bool erase(const std::string& key) {
    auto [status, body] = call("erase of '" + key + "'", request(detail::store_op::erase).str(key));
    return detail::store_frame_reader{body}.u8() != 0;
  }

  bool check(const std::vector<std::string>& keys) {
    auto [status, body] = call("check of " + detail::quoted_keys(keys), request(detail::store_op::check).strs(keys));
    return detail::store_frame_reader{body}.u8() != 0;
  }

  std::int64_t count() {
    auto [status, body] = call("count", request(detail::store_op::count));
    return detail::store_frame_reader{body}.i64();
  }

  void wait(const std::vector<std::string>& keys) { wait(keys, timeout()); }
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
    wait_for("wait for " + detail::quoted_keys(keys), keys, timeout);
  }

 private:
  static inline const std::string prefix = "veomni::comm::store: ";
  enum class io { done, timed_out, closed };

  static detail::store_frame_writer request(detail::store_op op) { return detail::store_frame_writer{}.op(op); }

  void wait_for(const std::string& what, const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
    call(what, request(detail::store_op::wait).strs(keys), timeout);
  }

  std::string where() const { return "store at " + host_ + ":" + std::to_string(port_); }

  // Sends one request and returns the reply's status and the fields after it.
  std::pair<detail::store_status, std::string> call(const std::string& what, detail::store_frame_writer req) {
    return call(what, std::move(req), timeout());
  }
  std::pair<detail::store_status, std::string> call(const std::string& what, detail::store_frame_writer req,
                                                    std::chrono::milliseconds timeout) {
    std::lock_guard lock(mutex_);
    const auto deadline = detail::deadline_after(timeout);
    if (!fd_) connect(deadline, timeout);
    const std::string frame = req.frame();
    std::string len, body;
    io r = send_all(frame, deadline);
    if (r == io::done) r = recv_exact(len, 4, deadline);
    if (r == io::done) r = recv_exact(body, detail::store_frame_reader{len}.uint(4), deadline);
    if (r != io::done) {
      fd_.reset();  // a late reply must not answer the next request
      if (r == io::timed_out)
        throw comm_error(prefix + what + " timed out after " + std::to_string(timeout.count()) + " ms (" + where() + ")");
      throw comm_error(prefix + "the " + where() + " closed the connection during " + what + " (is rank 0 gone?)");
    }
    detail::store_frame_reader fields{body};
    const auto status = static_cast<detail::store_status>(fields.u8());
    if (status == detail::store_status::error) throw comm_error(prefix + what + ": " + fields.str());
    return {status, std::string(fields.rest)};
  }

  // Blocks in poll() until `events` on the socket or the deadline.
  bool ready(short events, detail::store_clock::time_point deadline) const {
    for (;;) {
      pollfd p{fd_.fd, events, 0};
      const int n = ::poll(&p, 1, detail::poll_ms(deadline));
      if (n > 0) return true;
      if (n == 0 || errno != EINTR) return false;
    }
  }

  io send_all(std::string_view data, detail::store_clock::time_point deadline) {
    while (!data.empty()) {
      if (!ready(POLLOUT, deadline)) return io::timed_out;
      const ssize_t n = ::send(fd_.fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) data.remove_prefix(static_cast<std::size_t>(n));
      else if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      else return io::closed;
    }
    return io::done;
  }

  io recv_exact(std::string& out, std::uint64_t n, detail::store_clock::time_point deadline) {
    if (n > detail::max_store_frame) return io::closed;
    char buf[65536];
    while (out.size() < n) {
      if (!ready(POLLIN, deadline)) return io::timed_out;
      const ssize_t got = ::recv(fd_.fd, buf, std::min<std::size_t>(sizeof buf, n - out.size()), 0);
      if (got > 0) out.append(buf, static_cast<std::size_t>(got));
      else if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      else return io::closed;
    }
    return io::done;
  }

  // Tries every address of host_ until one accepts; again every 50 ms until
  // the deadline ("connection refused" while rank 0 is still starting).
  void connect(detail::store_clock::time_point deadline, std::chrono::milliseconds timeout) {
    std::string why = "no address";
    for (;;) {
      for (const auto& a : detail::resolve(host_, port_, why)) {
        fd_.reset(::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd_) {
          why = detail::errno_text();
          continue;
        }
        int err = 0;
        if (::connect(fd_.fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
          err = errno;
          if (err == EINPROGRESS) {
            socklen_t len = sizeof err;
            err = ready(POLLOUT, deadline) ? (::getsockopt(fd_.fd, SOL_SOCKET, SO_ERROR, &err, &len), err) : ETIMEDOUT;
          }
        }
        if (err == 0) {
          const int one = 1;
          ::setsockopt(fd_.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          return;
        }
        why = detail::errno_text(err);
        fd_.reset();
      }
      const auto now = detail::store_clock::now();
      if (now >= deadline)
        throw comm_error(prefix + "could not connect to the " + where() + " within " +
                         std::to_string(timeout.count()) + " ms: " + why);
      std::this_thread::sleep_for(std::min<detail::store_clock::duration>(std::chrono::milliseconds(50), deadline - now));
    }
  }

  std::string host_;
  std::uint16_t port_;
  mutable std::mutex mutex_;
  std::chrono::milliseconds timeout_;
  detail::unique_fd fd_;
};

}  // namespace veomni::comm
