// A fixture the dispatch check must reject (tests/parallel/CMakeLists.txt):
// the runtime switching on a built-in policy type.
template <class I>
constexpr bool is_ddp = std::is_same_v<I, DDP>;
