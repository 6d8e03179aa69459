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
  static constexpr std::string_view name = Name.view();
  using component = C;
};

namespace detail {
// Where the '.' of "node.port" is, or npos. A loop, not string_view::find:
// under GCC's -fsanitize=null (the asan preset) find's test of a pointer into
// a template parameter object against null is not a constant expression
// (GCC PR 71962), and every graph would fail to compile.
constexpr std::size_t dot_of(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s[i] == '.') return i;
  return std::string_view::npos;
}
}  // namespace detail

// "node.port" on both sides.
template <fixed_string From, fixed_string To>
struct edge {
  static constexpr std::string_view from = From.view();
  static constexpr std::string_view to = To.view();
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
  std::uint64_t x = 1469598103934665603ull;
  for (char c : s) x = (x ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return x;
}

}  // namespace detail

// Node dims of a whole model, addressed by node name: d.at<"lm">().hidden = 64;
// or by node index, as a tuple: std::get<I>(d).
template <class... N>
struct model_dims : std::tuple<typename N::component::dims...> {
  static constexpr std::array<std::string_view, sizeof...(N)> names{N::name...};
  static constexpr std::array<std::uint64_t, sizeof...(N)> hashes{detail::name_hash(N::name)...};
  // by hash first: one string compare per lookup, not one per node
  template <fixed_string Name>
  static constexpr std::size_t index() {
    const std::uint64_t h = detail::name_hash(Name.view());
    for (std::size_t i = 0; i < sizeof...(N); ++i)
      if (hashes[i] == h && names[i] == Name.view()) return i;
    return sizeof...(N);
  }
  template <fixed_string Name, std::size_t I = index<Name>()>
  constexpr auto& at() {
    static_assert(I < sizeof...(N), "model_dims::at<Name>(): the model has no node of that name");
    return std::get<(I < sizeof...(N) ? I : 0)>(*this);  // one error, not a cascade
  }
  template <fixed_string Name, std::size_t I = index<Name>()>
  constexpr const auto& at() const {
    static_assert(I < sizeof...(N), "model_dims::at<Name>(): the model has no node of that name");
    return std::get<(I < sizeof...(N) ? I : 0)>(*this);  // one error, not a cascade
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

template <class... N, class... E>
struct graph<nodes<N...>, edges<E...>> {
  static constexpr std::size_t size = sizeof...(N);
  static constexpr std::array<std::string_view, size> names{N::name...};
  using node_list = std::tuple<N...>;
  using dims = model_dims<N...>;
  using components = comps<typename N::component...>;

 private:
  static constexpr std::array<std::uint64_t, size> hashes{detail::name_hash(N::name)...};

 public:
  static constexpr std::size_t index_of(std::string_view n) {
    const std::uint64_t h = detail::name_hash(n);
    for (std::size_t i = 0; i < size; ++i)
      if (hashes[i] == h && names[i] == n) return i;
    return size;
  }
  template <std::size_t I>
  using node_at = std::tuple_element_t<I, node_list>;
  template <std::size_t I>
  using component_at = typename node_at<I>::component;
  template <std::size_t I>
  using component_or_absent =
      typename std::conditional_t<(I < size), std::tuple_element<(I < size ? I : 0), node_list>,
                                  std::type_identity<node<"", detail::absent_component>>>::type::component;

 private:
  // the second node of the first pair sharing a name, or size
  static constexpr std::size_t first_duplicate = [] {
    for (std::size_t j = 0; j < size; ++j)
      for (std::size_t i = 0; i < j; ++i)
        if (hashes[i] == hashes[j] && names[i] == names[j]) return j;
    return size;
  }();
  static constexpr bool unique_names = [] {
    if constexpr (first_duplicate < size)
      return detail::report_duplicate_node<diag::node_named<node_at<first_duplicate>::name>>();
    else
      return true;
  }();

 public:
  static constexpr std::size_t edge_count = sizeof...(E);
  static constexpr std::array<std::string_view, sizeof...(E)> edge_from{E::from...};
  static constexpr std::array<std::string_view, sizeof...(E)> edge_to{E::to...};

 private:
  // An input takes one producer. (Checked here, in the graph, not in a
  // template naming the edge: that cost a 128-node graph 45 % more compiler
  // memory, benchmarks/bench_plan_compile.py. The graph's type in the
  // error lists the edges.)
  // the second of the first two edges into one input, or the edge count
  static constexpr std::size_t first_fan_in = [] {
    std::array<std::uint64_t, sizeof...(E)> h{};
    for (std::size_t i = 0; i < sizeof...(E); ++i) h[i] = detail::name_hash(edge_to[i]);
    for (std::size_t i = 0; i < sizeof...(E); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (h[j] == h[i] && edge_to[j] == edge_to[i]) return i;
    return sizeof...(E);
  }();
  static constexpr bool one_producer_each = [] {
    if constexpr (first_fan_in < sizeof...(E))
      return detail::report_fan_in<diag::port_named<std::tuple_element_t<first_fan_in, std::tuple<E...>>::to>>();
    else
      return true;
  }();

  // The edges split into node and port names, computed once for all of them
  // (not as members of each edge<> type).
  struct edge_ends {
    std::array<std::string_view, sizeof...(E) + 1> from_node, from_port, to_node, to_port;
  };
  static constexpr edge_ends ends = [] {
    edge_ends r{};
    auto cut = [](std::string_view s, std::string_view& node, std::string_view& port) {
      const std::size_t d = detail::dot_of(s);
      node = d == std::string_view::npos ? s : std::string_view{s.data(), d};
      port = d == std::string_view::npos ? std::string_view{} : std::string_view{s.data() + d + 1, s.size() - d - 1};
    };
    for (std::size_t e = 0; e < sizeof...(E); ++e) {
      cut(edge_from[e], r.from_node[e], r.from_port[e]);
      cut(edge_to[e], r.to_node[e], r.to_port[e]);
    }
    return r;
  }();

  // The nodes' port tables, as values.
  struct port_table {
    const std::string_view* names;
    const std::string_view* kinds;
    std::size_t size;
    constexpr std::size_t find(std::string_view n) const {
      for (std::size_t i = 0; i < size; ++i)
        if (names[i] == n) return i;
      return size;
    }
  };
  static constexpr std::array<port_table, size> in_ports{port_table{
      N::component::inputs::names.data(), N::component::inputs::kinds.data(), N::component::inputs::size}...};
  static constexpr std::array<port_table, size> out_ports{port_table{
      N::component::outputs::names.data(), N::component::outputs::kinds.data(), N::component::outputs::size}...};

  // All edges are checked in one constant evaluation; detail::check_edge,
  // whose error names the edge, is instantiated only for the first bad one
  // (one template per edge cost a 128-node graph most of its compile time).
  static constexpr std::size_t first_bad_edge = [] {
    for (std::size_t e = 0; e < sizeof...(E); ++e) {
      const std::size_t fi = index_of(ends.from_node[e]), ti = index_of(ends.to_node[e]);
      if (fi == size || ti == size) return e;
      const std::size_t fp = out_ports[fi].find(ends.from_port[e]), tp = in_ports[ti].find(ends.to_port[e]);
      if (fp == out_ports[fi].size || tp == in_ports[ti].size) return e;
      if (out_ports[fi].kinds[fp] != in_ports[ti].kinds[tp]) return e;
    }
    return sizeof...(E);
  }();
  static constexpr bool edges_ok = [] {
    if constexpr (first_bad_edge < sizeof...(E))
      return detail::check_edge<graph, std::tuple_element_t<first_bad_edge, std::tuple<E...>>>::ok;
    else
      return one_producer_each;
  }();

  static constexpr std::array<std::pair<std::size_t, std::size_t>, sizeof...(E)> links = [] {
    std::array<std::pair<std::size_t, std::size_t>, sizeof...(E)> l{};
    for (std::size_t e = 0; e < sizeof...(E); ++e) l[e] = {index_of(ends.from_node[e]), index_of(ends.to_node[e])};
    return l;
  }();

  // Kahn's algorithm; returns size+1 in slot 0 when there is a cycle.
  static constexpr std::array<std::size_t, size> topo() {
    std::array<std::size_t, size> indeg{}, out{};
    if (!edges_ok) {  // already reported; keep the declared order to avoid a second error
      for (std::size_t i = 0; i < size; ++i) out[i] = i;
      return out;
    }
    for (auto [f, t] : links) ++indeg[t];
    // the edges grouped by source node (first[i] .. first[i + 1] in dst)
    std::array<std::size_t, size + 1> first{};
    std::array<std::size_t, sizeof...(E) + 1> dst{};
    for (auto [f, t] : links) ++first[f + 1];
    for (std::size_t i = 0; i < size; ++i) first[i + 1] += first[i];
    {
      std::array<std::size_t, size + 1> fill = first;
      for (auto [f, t] : links) dst[fill[f]++] = t;
    }
    std::array<bool, size> done{};
    std::size_t n = 0;
    while (n < size) {
      std::size_t pick = size;
      for (std::size_t i = 0; i < size && pick == size; ++i)
        if (!done[i] && indeg[i] == 0) pick = i;
      if (pick == size) {
        out[0] = size + 1;
        return out;
      }
      done[pick] = true;
      out[n++] = pick;
      for (std::size_t k = first[pick]; k < first[pick + 1]; ++k) --indeg[dst[k]];
    }
    return out;
  }

 public:
  // A node on the cycle that stopped topo(): every node it left has a
  // predecessor it also left, so walking back size steps from one ends on
  // the cycle.
  static constexpr std::size_t node_on_cycle() {
    std::array<std::size_t, size> ordered{};
    for (std::size_t i = 0; i < size; ++i) ordered[i] = size;
    std::array<bool, size> left{};
    for (std::size_t i = 0; i < size; ++i) left[i] = true;
    // the nodes Kahn's algorithm can order, again
    std::array<std::size_t, size> indeg{};
    for (auto [f, t] : links) ++indeg[t];
    for (bool moved = true; moved;) {
      moved = false;
      for (std::size_t i = 0; i < size; ++i)
        if (left[i] && indeg[i] == 0) {
          left[i] = false;
          moved = true;
          for (auto [f, t] : links)
            if (f == i) --indeg[t];
        }
    }
    std::size_t at = 0;
    while (at < size && !left[at]) ++at;
    for (std::size_t step = 0; step < size; ++step)
      for (auto [f, t] : links)
        if (t == at && left[f]) {
          at = f;
          break;
        }
    return at;
  }

 public:
  static constexpr std::array<std::size_t, size> order = topo();

 private:
  static constexpr bool acyclic = [] {
    if constexpr (size > 0 && order[0] > size)
      return detail::report_cycle<diag::node_named<node_at<node_on_cycle()>::name>>();
    else
      return true;
  }();

 public:
  // Whether every check passed. One that failed has stopped the build with
  // its own error (diagnostics.hpp); the assertion reads them, so that they
  // run whenever the graph is instantiated, and fails on none of them.
  static constexpr bool valid = unique_names && edges_ok && acyclic;
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
