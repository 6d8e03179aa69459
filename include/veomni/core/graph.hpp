#pragma once
// The model graph: named nodes of components and edges between their ports.
//
//   using tiny_vl = graph<
//       nodes<node<"vision", vision_encoder>, node<"proj", projector>, node<"lm", text_decoder>>,
//       edges<edge<"vision.embeds", "proj.in">, edge<"proj.out", "lm.image_embeds">>>;
//
// Checked when the graph is instantiated: node names are unique, every edge
// names an existing node and port, the two ports carry the same tensor kind,
// no input port has two edges into it (an input takes one producer: two
// image encoders feed two ports, or one port after a component that merges
// them), and there is no cycle. `tiny_vl::order` is the topological order
// ({0, 1, 2} above): nodes run forward in it and backward in reverse.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "component.hpp"
#include "diagnostics.hpp"
#include "fixed_string.hpp"

namespace veomni {

template <fixed_string Name, Component C>
struct node {
  static constexpr std::string_view name = text_of<Name>;
  using component = C;
};

namespace detail {
// Where the '.' of "node.port" is, or npos. A loop, not string_view::find:
// under GCC's -fsanitize=null (the asan preset) find's test of a pointer into
// a template parameter object against null is not a constant expression
// (GCC PR 71962), and every graph would fail to compile.
constexpr std::size_t dot_of(std::string_view s) {
  const char* p = s.data();
  for (std::size_t i = 0, n = s.size(); i < n; ++i)
    if (p[i] == '.') return i;
  return std::string_view::npos;
}
// a == b, as a pointer loop: in constant evaluation each call (string_view's
// operator==, char_traits, std::array's operator[]) costs the compiler far
// more than the compare, and the graph's checks make thousands
constexpr bool same(std::string_view a, std::string_view b) {
  const std::size_t n = a.size();
  if (n != b.size()) return false;
  const char *x = a.data(), *y = b.data();
  for (std::size_t i = 0; i < n; ++i)
    if (x[i] != y[i]) return false;
  return true;
}
}  // namespace detail

// "node.port" on both sides.
template <fixed_string From, fixed_string To>
struct edge {
  static constexpr std::string_view from = text_of<From>;
  static constexpr std::string_view to = text_of<To>;
  static constexpr std::string_view from_node = from.substr(0, detail::dot_of(from));
  static constexpr std::string_view from_port =
      detail::dot_of(from) == std::string_view::npos ? std::string_view{} : from.substr(detail::dot_of(from) + 1);
  static constexpr std::string_view to_node = to.substr(0, detail::dot_of(to));
  static constexpr std::string_view to_port =
      detail::dot_of(to) == std::string_view::npos ? std::string_view{} : to.substr(detail::dot_of(to) + 1);
};

template <class... N>
struct nodes {};
// The components of a graph's nodes, in node order (G::components): what
// per-node costing keys on, without the node names.
template <class... C>
struct comps {};
template <class... E>
struct edges {};

namespace detail {
struct absent_component {
  static constexpr modality mod = modality::text;
  using inputs = ports<>;
  using outputs = ports<>;
  struct dims {};
  static constexpr std::array<layer, 0> layers{};
  static constexpr long blocks(const dims&) { return 0; }
  static constexpr geometry shape(std::size_t, const dims&) { return {}; }
};

enum class edge_fault { none, no_from_node, no_to_node, no_from_port, no_to_port, kind_mismatch };
}  // namespace detail

template <class Nodes, class Edges = edges<>>
struct graph;

namespace detail {
// FNV-1a of a node name. Lookups by name (the graph's, model_dims::at)
// compare hashes first and confirm with the string, so a collision costs one
// more compare, never a wrong node.
constexpr std::uint64_t name_hash(std::string_view s) {
  // a pointer loop, as same() above
  const char* p = s.data();
  const std::size_t n = s.size();
  std::uint64_t x = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) x = (x ^ static_cast<unsigned char>(p[i])) * 1099511628211ull;
  return x;
}

template <class Node>
constexpr bool report_no_dims_node() {
  static_assert(sizeof(Node) == 0, "model_dims::at<Name>(): the model has no node of that name (the name is here)");
  return false;
}

// The I-th of a pack as an indexed base: a class derived from indexed<I, T>
// for each I finds one by overload resolution, in one step, where
// std::tuple_element and std::get recurse through N nested classes whose
// template arguments repeat the tail (N^2 in all). It holds the dims of
// model_dims (slot<I>) and picks a node's policies in plan.hpp (pick_t).
template <std::size_t I, class T>
struct indexed {
  T value{};
};
template <class Seq, class... T>
struct indexed_list;
template <std::size_t... I, class... T>
struct indexed_list<std::index_sequence<I...>, T...> : indexed<I, T>... {};
template <std::size_t I, class T>
constexpr T& slot(indexed<I, T>& s) {
  return s.value;
}
template <std::size_t I, class T>
constexpr const T& slot(const indexed<I, T>& s) {
  return s.value;
}
template <std::size_t I, class T>
std::type_identity<T> pick(const indexed<I, T>*);
template <std::size_t I, class L>
using pick_t = typename decltype(pick<I>(static_cast<const L*>(nullptr)))::type;
}  // namespace detail

// The dims of the nodes of components C..., by node index: veomni::get<I>(d)
// or d.get<I>(). model_dims derives from it.
template <class... C>
struct dims_of : detail::indexed_list<std::index_sequence_for<C...>, typename C::dims...> {
  static constexpr std::size_t size = sizeof...(C);
  template <std::size_t I>
  constexpr auto& get() {
    return detail::slot<I>(*this);
  }
  template <std::size_t I>
  constexpr const auto& get() const {
    return detail::slot<I>(*this);
  }
};
template <std::size_t I, class... C>
constexpr auto& get(dims_of<C...>& d) {
  return detail::slot<I>(d);
}
template <std::size_t I, class... C>
constexpr const auto& get(const dims_of<C...>& d) {
  return detail::slot<I>(d);
}

// Node dims of a whole model, addressed by node name: d.at<"lm">().hidden = 64;
// or by node index: veomni::get<I>(d) (or d.get<I>()).
template <class... N>
struct model_dims : dims_of<typename N::component...> {
 private:
  // before index(): clang reads it when at<>'s default argument is instantiated
  static constexpr std::uint64_t hashes[sizeof...(N) + 1]{detail::name_hash(N::name)..., 0};

 public:
  static constexpr std::array<std::string_view, sizeof...(N)> names{N::name...};
  // by hash first: one string compare per lookup, not one per node
  static constexpr std::size_t index(std::string_view n) {
    const std::uint64_t h = detail::name_hash(n);
    const std::string_view* all = names.data();
    for (std::size_t i = 0; i < sizeof...(N); ++i)
      if (hashes[i] == h && detail::same(all[i], n)) return i;
    return sizeof...(N);
  }
  template <fixed_string Name, std::size_t I = index(text_of<Name>)>
  constexpr auto& at() {
    if constexpr (I == sizeof...(N)) detail::report_no_dims_node<diag::node_named<text_of<Name>>>();
    return detail::slot<(I < sizeof...(N) ? I : 0)>(*this);  // one error, not a cascade
  }
  template <fixed_string Name, std::size_t I = index(text_of<Name>)>
  constexpr const auto& at() const {
    if constexpr (I == sizeof...(N)) detail::report_no_dims_node<diag::node_named<text_of<Name>>>();
    return detail::slot<(I < sizeof...(N) ? I : 0)>(*this);
  }
};

namespace detail {
// One check per edge, instantiated with the edge's type so that the compiler's
// "required from" context names the offending edge.
// The edge's fault, reported with both its ends spelled out (see diagnostics.hpp).
template <edge_fault F, class From, class To>
constexpr bool report_edge() {
  static_assert(F != edge_fault::no_from_node, "veomni::graph: an edge starts at a node the model does not have");
  static_assert(F != edge_fault::no_to_node, "veomni::graph: an edge ends at a node the model does not have");
  static_assert(F != edge_fault::no_from_port,
                "veomni::graph: an edge starts at a port that is not an output of its node");
  static_assert(F != edge_fault::no_to_port, "veomni::graph: an edge ends at a port that is not an input of its node");
  static_assert(F != edge_fault::kind_mismatch,
                "veomni::graph: incompatible ports on an edge (the output's tensor kind differs from the input's)");
  return F == edge_fault::none;
}
template <class Node>
constexpr bool report_duplicate_node() {
  static_assert(sizeof(Node) == 0, "veomni::graph: two nodes have the same name");
  return false;
}
template <class Port>
constexpr bool report_fan_in() {
  static_assert(sizeof(Port) == 0, "veomni::graph: two edges end at the same input port (an input takes one producer)");
  return false;
}
template <class Node>
constexpr bool report_cycle() {
  static_assert(sizeof(Node) == 0, "veomni::graph: the model graph has a cycle (through the node named here)");
  return false;
}

template <class G, class E>
struct check_edge {
  static constexpr std::size_t fi = G::index_of(E::from_node);
  static constexpr std::size_t ti = G::index_of(E::to_node);
  using from_c = typename G::template component_or_absent<fi>;
  using to_c = typename G::template component_or_absent<ti>;
  static constexpr std::size_t fp = from_c::outputs::find(E::from_port);
  static constexpr std::size_t tp = to_c::inputs::find(E::to_port);
  static constexpr edge_fault fault = [] {
    if (fi == G::size) return edge_fault::no_from_node;
    if (ti == G::size) return edge_fault::no_to_node;
    if (fp == from_c::outputs::size) return edge_fault::no_from_port;
    if (tp == to_c::inputs::size) return edge_fault::no_to_port;
    if (from_c::outputs::kinds[fp] != to_c::inputs::kinds[tp]) return edge_fault::kind_mismatch;
    return edge_fault::none;
  }();
  static constexpr bool ok = report_edge<fault, diag::port_named<E::from>, diag::port_named<E::to>>();
};
}  // namespace detail

namespace detail {
// A node's port table, as values.
struct port_table {
  const std::string_view* names;
  const std::string_view* kinds;
  std::size_t size;
  constexpr std::size_t find(std::string_view n) const {
    for (std::size_t i = 0; i < size; ++i)
      if (same(names[i], n)) return i;
    return size;
  }
};

// Stable bottom-up merge sort of the indices idx[0..n) by key[idx[i]].
constexpr void sort_by_key(std::size_t* idx, std::size_t* tmp, const std::uint64_t* key, std::size_t n) {
  for (std::size_t w = 1; w < n; w *= 2) {
    for (std::size_t lo = 0; lo < n; lo += 2 * w) {
      const std::size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      std::size_t a = lo, b = mid, t = lo;
      while (a < mid && b < hi) tmp[t++] = key[idx[b]] < key[idx[a]] ? idx[b++] : idx[a++];
      while (a < mid) tmp[t++] = idx[a++];
      while (b < hi) tmp[t++] = idx[b++];
    }
    for (std::size_t i = 0; i < n; ++i) idx[i] = tmp[i];
  }
}

// The smallest j whose string equals that of some i < j, or n. `by` holds the
// indices sorted (stably) by hash: equal strings sit in one run of equal hashes.
constexpr std::size_t first_repeat(const std::string_view* s, const std::uint64_t* h, const std::size_t* by,
                                   std::size_t n) {
  std::size_t first = n;
  for (std::size_t r = 0; r < n;) {
    std::size_t e = r + 1;
    while (e < n && h[by[e]] == h[by[r]]) ++e;
    for (std::size_t b = r + 1; b < e; ++b)
      for (std::size_t a = r; a < b; ++a)
        if (s[by[a]] == s[by[b]] && by[b] < first) first = by[b];
    r = e;
  }
  return first;
}

// What graph<> computes of its nodes and edges, in one constant evaluation
// keyed on the counts only (not on the graph's type, whose name carries
// every node and edge name): the name lookup table, the first fault of each
// check, the edges as node indices, and the topological order.
template <std::size_t NN, std::size_t NE>
struct graph_facts {
  std::uint64_t hash[NN + 1]{};
  std::size_t by_hash[NN + 1]{};  // node indices sorted by name hash
  std::size_t first_duplicate = NN;
  std::size_t first_fan_in = NE;
  std::size_t first_bad_edge = NE;
  std::size_t link_from[NE + 1]{}, link_to[NE + 1]{};
  std::array<std::size_t, NN> order{};  // order[0] == NN + 1: a cycle
  std::size_t cycle_node = NN;          // then a node on it

  // by hash, then one string compare per node of that hash
  constexpr std::size_t find(const std::string_view* names, std::string_view n) const {
    const std::uint64_t h = name_hash(n);
    std::size_t lo = 0, hi = NN;
    while (lo < hi) {
      const std::size_t mid = lo + (hi - lo) / 2;
      if (hash[by_hash[mid]] < h) lo = mid + 1;
      else hi = mid;
    }
    std::size_t best = NN;
    for (; lo < NN && hash[by_hash[lo]] == h; ++lo)
      if (same(names[by_hash[lo]], n) && by_hash[lo] < best) best = by_hash[lo];
    return best;
  }
};

template <std::size_t NN, std::size_t NE>
constexpr graph_facts<NN, NE> analyze_graph(const std::string_view* names, const std::string_view* edge_from,
                                            const std::string_view* edge_to, const port_table* in_ports,
                                            const port_table* out_ports) {
  graph_facts<NN, NE> r{};
  std::size_t tmp[(NN > NE ? NN : NE) + 1]{};
  for (std::size_t i = 0; i < NN; ++i) r.hash[i] = name_hash(names[i]), r.by_hash[i] = i;
  sort_by_key(r.by_hash, tmp, r.hash, NN);
  r.first_duplicate = first_repeat(names, r.hash, r.by_hash, NN);

  // An input takes one producer: the second of the first two edges into one input.
  {
    std::uint64_t h[NE + 1]{};
    std::size_t by[NE + 1]{};
    for (std::size_t e = 0; e < NE; ++e) h[e] = name_hash(edge_to[e]), by[e] = e;
    sort_by_key(by, tmp, h, NE);
    r.first_fan_in = first_repeat(edge_to, h, by, NE);
  }

  // The edges split into node and port names and checked; the first bad one.
  auto cut = [](std::string_view s, std::string_view& node, std::string_view& port) {
    const std::size_t d = dot_of(s);
    node = d == std::string_view::npos ? s : std::string_view{s.data(), d};
    port = d == std::string_view::npos ? std::string_view{} : std::string_view{s.data() + d + 1, s.size() - d - 1};
  };
  for (std::size_t e = 0; e < NE; ++e) {
    std::string_view fnode, fport, tnode, tport;
    cut(edge_from[e], fnode, fport);
    cut(edge_to[e], tnode, tport);
    const std::size_t fi = r.find(names, fnode), ti = r.find(names, tnode);
    r.link_from[e] = fi;
    r.link_to[e] = ti;
    if (r.first_bad_edge < NE) continue;
    if (fi == NN || ti == NN) {
      r.first_bad_edge = e;
      continue;
    }
    const std::size_t fp = out_ports[fi].find(fport), tp = in_ports[ti].find(tport);
    if (fp == out_ports[fi].size || tp == in_ports[ti].size || !same(out_ports[fi].kinds[fp], in_ports[ti].kinds[tp]))
      r.first_bad_edge = e;
  }

  // Kahn's algorithm, taking the lowest-index ready node each time; a bad edge
  // (already reported) keeps the declared order, to avoid a second error.
  if (r.first_bad_edge < NE || r.first_fan_in < NE) {
    for (std::size_t i = 0; i < NN; ++i) r.order[i] = i;
    return r;
  }
  std::size_t indeg[NN + 1]{}, first[NN + 2]{}, dst[NE + 1]{};
  for (std::size_t e = 0; e < NE; ++e) ++indeg[r.link_to[e]], ++first[r.link_from[e] + 1];
  for (std::size_t i = 0; i < NN; ++i) first[i + 1] += first[i];
  for (std::size_t i = 0; i <= NN; ++i) tmp[i] = first[i];
  for (std::size_t e = 0; e < NE; ++e) dst[tmp[r.link_from[e]]++] = r.link_to[e];
  bool done[NN + 1]{};
  // every node below `from` is done or waits on a predecessor
  std::size_t from = 0;
  for (std::size_t n = 0; n < NN; ++n) {
    std::size_t pick = from;
    while (pick < NN && (done[pick] || indeg[pick] != 0)) ++pick;
    if (pick == NN) {
      r.order[0] = NN + 1;
      // a node on the cycle: every node left has a predecessor also left, so
      // walking back NN steps from one ends on the cycle
      std::size_t at = 0;
      while (done[at]) ++at;
      for (std::size_t step = 0; step < NN; ++step)
        for (std::size_t e = 0; e < NE; ++e)
          if (r.link_to[e] == at && !done[r.link_from[e]]) {
            at = r.link_from[e];
            break;
          }
      r.cycle_node = at;
      return r;
    }
    done[pick] = true;
    r.order[n] = pick;
    from = pick + 1;
    for (std::size_t k = first[pick]; k < first[pick + 1]; ++k)
      if (--indeg[dst[k]] == 0 && dst[k] < from) from = dst[k];
  }
  return r;
}
}  // namespace detail

template <class... N, class... E>
struct graph<nodes<N...>, edges<E...>> {
  static constexpr std::size_t size = sizeof...(N);
  static constexpr std::array<std::string_view, size> names{N::name...};
  using node_list = std::tuple<N...>;
  using dims = model_dims<N...>;
  using components = comps<typename N::component...>;
  static constexpr std::size_t edge_count = sizeof...(E);
  static constexpr std::array<std::string_view, sizeof...(E)> edge_from{E::from...};
  static constexpr std::array<std::string_view, sizeof...(E)> edge_to{E::to...};

 private:
  // Every check in one constant evaluation (detail::analyze_graph), given
  // the nodes' port tables as values. The templates whose errors name a
  // node, an edge or a port are instantiated only for the first fault (one
  // template per edge cost a 128-node graph most of its compile time), and
  // this class has few static members: each is a symbol whose mangled name
  // spells every node and edge name.
  static constexpr detail::graph_facts<size, sizeof...(E)> facts = detail::analyze_graph<size, sizeof...(E)>(
      names.data(), edge_from.data(), edge_to.data(),
      std::array<detail::port_table, size + 1>{
          detail::port_table{N::component::inputs::names.data(), N::component::inputs::kinds.data(),
                             N::component::inputs::size}...,
          detail::port_table{nullptr, nullptr, 0}}
          .data(),
      std::array<detail::port_table, size + 1>{
          detail::port_table{N::component::outputs::names.data(), N::component::outputs::kinds.data(),
                             N::component::outputs::size}...,
          detail::port_table{nullptr, nullptr, 0}}
          .data());

 public:
  static constexpr std::size_t index_of(std::string_view n) { return facts.find(names.data(), n); }
  template <std::size_t I>
  using node_at = std::tuple_element_t<I, node_list>;
  template <std::size_t I>
  using component_at = typename node_at<I>::component;
  template <std::size_t I>
  using component_or_absent =
      typename std::conditional_t<(I < size), std::tuple_element<(I < size ? I : 0), node_list>,
                                  std::type_identity<node<"", detail::absent_component>>>::type::component;

  static constexpr std::array<std::size_t, size> order = facts.order;

  // Whether every check passed. One that failed has stopped the build with
  // its own error (diagnostics.hpp), the first fault of each kind only:
  // duplicate names; a bad edge (its ends spelled out), else two edges into
  // one input; a cycle (checked only when the edges are good).
  static constexpr bool valid = [] {
    bool ok = true;
    if constexpr (facts.first_duplicate < size)
      ok = detail::report_duplicate_node<diag::node_named<node_at<facts.first_duplicate>::name>>() && ok;
    if constexpr (facts.first_bad_edge < edge_count)
      ok = detail::check_edge<graph, std::tuple_element_t<facts.first_bad_edge, std::tuple<E...>>>::ok && ok;
    else if constexpr (facts.first_fan_in < edge_count)
      ok = detail::report_fan_in<
               diag::port_named<std::tuple_element_t<facts.first_fan_in, std::tuple<E...>>::to>>() &&
           ok;
    else if constexpr (size > 0 && facts.order[0] > size)
      ok = detail::report_cycle<diag::node_named<node_at<facts.cycle_node>::name>>() && ok;
    return ok;
  }();
  static_assert(valid || !valid);
};

template <class T>
struct is_graph : std::false_type {};
template <class N, class E>
struct is_graph<graph<N, E>> : std::true_type {};
template <class T>
concept Model = is_graph<T>::value;

// Calls f(std::integral_constant<std::size_t, I>{}) for each node index.
template <Model G, class F>
constexpr void for_each_node(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(std::integral_constant<std::size_t, I>{}), ...);
  }(std::make_index_sequence<G::size>{});
}

}  // namespace veomni
