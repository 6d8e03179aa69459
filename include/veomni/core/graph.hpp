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
#include <string_view>
#include <tuple>
#include <type_traits>

#include "component.hpp"
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

// Node dims of a whole model, addressed by node name: d.at<"lm">().hidden = 64;
template <class... N>
struct model_dims : std::tuple<typename N::component::dims...> {
  static constexpr std::array<std::string_view, sizeof...(N)> names{N::name...};
  template <fixed_string Name>
  static constexpr std::size_t index() {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == Name.view()) return i;
    return names.size();
  }
  template <fixed_string Name>
  constexpr auto& at() {
    static_assert(index<Name>() < sizeof...(N), "model_dims::at<Name>(): the model has no node of that name");
    return std::get<index<Name>()>(*this);
  }
  template <fixed_string Name>
  constexpr const auto& at() const {
    static_assert(index<Name>() < sizeof...(N), "model_dims::at<Name>(): the model has no node of that name");
    return std::get<index<Name>()>(*this);
  }
};

namespace detail {
// One check per edge, instantiated with the edge's type so that the compiler's
// "required from" context names the offending edge.
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
  static_assert(fault != edge_fault::no_from_node,
                "veomni::graph: an edge starts at a node the model does not have");
  static_assert(fault != edge_fault::no_to_node,
                "veomni::graph: an edge ends at a node the model does not have");
  static_assert(fault != edge_fault::no_from_port,
                "veomni::graph: an edge starts at a port that is not an output of its node");
  static_assert(fault != edge_fault::no_to_port,
                "veomni::graph: an edge ends at a port that is not an input of its node");
  static_assert(fault != edge_fault::kind_mismatch,
                "veomni::graph: incompatible ports on an edge (the output's tensor kind differs from the input's)");
  static constexpr bool ok = fault == edge_fault::none;
};
}  // namespace detail

template <class... N, class... E>
struct graph<nodes<N...>, edges<E...>> {
  static constexpr std::size_t size = sizeof...(N);
  static constexpr std::array<std::string_view, size> names{N::name...};
  using node_list = std::tuple<N...>;
  using dims = model_dims<N...>;

  static constexpr std::size_t index_of(std::string_view n) {
    for (std::size_t i = 0; i < size; ++i)
      if (names[i] == n) return i;
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
  static constexpr bool unique_names = [] {
    for (std::size_t i = 0; i < size; ++i)
      for (std::size_t j = i + 1; j < size; ++j)
        if (names[i] == names[j]) return false;
    return true;
  }();
  static_assert(unique_names, "veomni::graph: two nodes have the same name");

 public:
  static constexpr std::size_t edge_count = sizeof...(E);
  static constexpr std::array<std::string_view, sizeof...(E)> edge_from{E::from...};
  static constexpr std::array<std::string_view, sizeof...(E)> edge_to{E::to...};

 private:
  // An input takes one producer. (Checked here, in the graph, not in a
  // template naming the edge: that cost a 128-node graph 45 % more compiler
  // memory, benchmarks/bench_plan_compile.py. The graph's type in the
  // error lists the edges.)
  static constexpr bool one_producer_each = [] {
    for (std::size_t i = 0; i < sizeof...(E); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (edge_to[j] == edge_to[i]) return false;
    return true;
  }();
  static_assert(one_producer_each, "veomni::graph: two edges end at the same input port (an input takes one producer)");
  static constexpr bool edges_ok = (detail::check_edge<graph, E>::ok && ... && true) && one_producer_each;

  static constexpr std::array<std::pair<std::size_t, std::size_t>, sizeof...(E)> links{
      std::pair{index_of(E::from_node), index_of(E::to_node)}...};

  // Kahn's algorithm; returns size+1 in slot 0 when there is a cycle.
  static constexpr std::array<std::size_t, size> topo() {
    std::array<std::size_t, size> indeg{}, out{};
    if (!edges_ok) {  // already reported; keep the declared order to avoid a second error
      for (std::size_t i = 0; i < size; ++i) out[i] = i;
      return out;
    }
    for (auto [f, t] : links) ++indeg[t];
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
      for (auto [f, t] : links)
        if (f == pick) --indeg[t];
    }
    return out;
  }

 public:
  static constexpr std::array<std::size_t, size> order = topo();
  static_assert(size == 0 || order[0] <= size, "veomni::graph: the model graph has a cycle");
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
