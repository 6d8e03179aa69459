// Model graphs: topological order, ports, dims, components.
#include <doctest/doctest.h>

#include "../../examples/models.hpp"

using namespace veomni;
using namespace veomni::examples;

// Declared out of order: the topological order still runs encoders first.
using shuffled = graph<nodes<node<"lm", text_decoder>, node<"proj", projector>, node<"vision", vision_encoder>>,
                       edges<edge<"proj.out", "lm.image_embeds">, edge<"vision.embeds", "proj.in">>>;

TEST_CASE("graph: topological order follows the edges, not the declaration") {
  static_assert(shuffled::order == std::array<std::size_t, 3>{2, 1, 0});
  static_assert(tiny_vl::order == std::array<std::size_t, 3>{0, 1, 2});
  CHECK(shuffled::names[shuffled::order[0]] == "vision");
  CHECK(shuffled::names[shuffled::order[2]] == "lm");
}

TEST_CASE("graph: the omni model orders every encoder before the language model and the decoder last") {
  std::array<std::size_t, omni_moe::size> rank{};
  for (std::size_t r = 0; r < omni_moe::size; ++r) rank[omni_moe::order[r]] = r;
  auto at = [&](std::string_view n) { return rank[omni_moe::index_of(n)]; };
  CHECK(at("vision") < at("vision_proj"));
  CHECK(at("audio") < at("audio_proj"));
  CHECK(at("vision_proj") < at("lm"));
  CHECK(at("audio_proj") < at("lm"));
  CHECK(at("lm") < at("image_out"));
  CHECK(omni_moe::edge_count == 5);
}

TEST_CASE("graph: edges split into node and port") {
  using e = edge<"vision.embeds", "proj.in">;
  static_assert(e::from_node == "vision" && e::from_port == "embeds");
  static_assert(e::to_node == "proj" && e::to_port == "in");
  CHECK(tiny_vl::index_of("proj") == 1);
  CHECK(tiny_vl::index_of("missing") == tiny_vl::size);
}

TEST_CASE("graph: model dims are addressed by node name") {
  constexpr auto d = tiny_vl_dims();
  static_assert(d.at<"lm">().hidden == 64);
  static_assert(d.at<"vision">().patch == 4);
  CHECK(veomni::get<2>(d).vocab == 512);
  CHECK(d.get<1>().out == 64);
}

// Names of 16 characters and more are packed into 64-bit words inside
// fixed_string (shorter ones stay one char per element): the text, the
// lookups and the edges' node and port parts are the same either way.
using long_names = graph<nodes<node<"an_image_encoder_with_a_long_name", vision_encoder>,
                               node<"its_projector_0123", projector>, node<"lm", text_decoder>>,
                         edges<edge<"an_image_encoder_with_a_long_name.embeds", "its_projector_0123.in">,
                               edge<"its_projector_0123.out", "lm.image_embeds">>>;

TEST_CASE("graph: fixed_string packs long names and gives back their text") {
  static_assert(!fixed_string<16>::packed && fixed_string<17>::packed);
  static_assert(text_of<"lm"> == "lm" && text_of<"fifteen_chars15"> == "fifteen_chars15");
  static_assert(text_of<"sixteen_chars_16"> == "sixteen_chars_16");
  static_assert(text_of<"a name of thirty-three characters"> == "a name of thirty-three characters");
  static_assert(fixed_string("its_projector_0123")[17] == '3' && fixed_string("its_projector_0123").size() == 18);
  static_assert(long_names::order == std::array<std::size_t, 3>{0, 1, 2});
  static_assert(long_names::index_of("its_projector_0123") == 1);
  static_assert(edge<"an_image_encoder_with_a_long_name.embeds", "p.in">::from_port == "embeds");
  constexpr auto d = [] {
    long_names::dims x;
    x.at<"an_image_encoder_with_a_long_name">().hidden = 32;
    x.at<"its_projector_0123">().in = 32;
    return x;
  }();
  static_assert(veomni::get<0>(d).hidden == 32 && d.get<1>().in == 32);
  CHECK(long_names::names[0] == "an_image_encoder_with_a_long_name");
  CHECK(long_names::edge_to[0] == "its_projector_0123.in");
}

TEST_CASE("components: ports carry tensor kinds and components model the concept") {
  static_assert(Component<text_decoder> && Component<moe_text_decoder> && Component<vision_encoder> &&
                Component<audio_encoder> && Component<projector> && Component<image_token_decoder>);
  static_assert(!Component<int>);
  CHECK(vision_encoder::outputs::kinds[0] == "embeds");
  CHECK(text_decoder::inputs::find("tokens") == 0);
  CHECK(text_decoder::inputs::find("nope") == text_decoder::inputs::size);
  static_assert(has_layer_kind<moe_text_decoder>(layer_kind::moe));
  static_assert(!has_layer_kind<text_decoder>(layer_kind::moe));
}

TEST_CASE("components: parameter counts match hand-computed values") {
  // hidden 64, heads 4 x 16, kv 2 x 16, ffn 128, vocab 512, 2 layers
  constexpr text_decoder::dims d{.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2,
                                 .head_dim = 16, .ffn = 128};
  constexpr long attn = 64 * 64 + 2 * 64 * 32 + 64 * 64;  // q, k, v, o
  constexpr long mlp = 3 * 64 * 128;
  constexpr long block = attn + mlp + 2 * 64;              // + two norms
  constexpr long root = 512 * 64 + 64 + 64 * 512;          // embed, final norm, head
  static_assert(unit_params<text_decoder>(d, scope::block, true) == block);
  static_assert(unit_params<text_decoder>(d, scope::model, true) == root);
  static_assert(total_params<text_decoder>(d) == root + 2 * block);
  // MoE: router 64x4 dense, 4 experts of 3*64*64
  constexpr auto md = omni_moe_dims().at<"lm">();
  static_assert(unit_expert_params<moe_text_decoder>(md, scope::block) == 4 * 3 * 64 * 64);
  static_assert(unit_params<moe_text_decoder>(md, scope::block, false) == attn + 64 * 4 + 2 * 64);
}

TEST_CASE("mesh: sizes by axis, flattened groups, the derived ep_dp axis and user axes") {
  constexpr mesh_shape m{.dp_replicate = 2, .dp_shard = 4, .sp = 2, .ep = 4};
  static_assert(m.world() == 16);
  static_assert(m.size(axes<axis::dp_shard, axis::sp>) == 8);
  static_assert(m[axis::ep_dp::name] == 2);
  static_assert(m["unknown"] == 1);
  constexpr mesh_shape u = mesh_shape{.dp_shard = 2}.with("cp", 4);
  static_assert(u["cp"] == 4 && u.world() == 8);
  CHECK(axes<axis::dp_shard, axis::sp>.contains("sp"));
  CHECK(!axes<axis::dp_shard>.overlaps(axes<axis::sp, axis::ep>));
}
