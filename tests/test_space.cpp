// Search spaces: operator types, op sets, cell topologies and their counts, genotypes (text,
// JSON, DOT) and their validation errors.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "testing.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/space/cell.hpp"
#include "tnas/space/genotype.hpp"
#include "tnas/space/op_set.hpp"
#include "tnas/space/ops.hpp"

using namespace tnas;
using namespace tnas::space;
using testing::throws_with;

// ---- compile-time facts ------------------------------------------------------------------------

static_assert(op::Operator<op::none> && op::Operator<op::sep_conv<5>> &&
              op::Operator<op::dil_conv<3, 2>> && op::Operator<op::conv<1>>);
static_assert(!op::Operator<int>);

static_assert(op::none::name == "none" && op::skip::name == "skip_connect");
static_assert(op::max_pool<3>::name == "max_pool_3x3" && op::avg_pool<3>::name == "avg_pool_3x3");
static_assert(op::sep_conv<3>::name == "sep_conv_3x3" && op::sep_conv<5>::name == "sep_conv_5x5");
static_assert(op::sep_conv<11>::name == "sep_conv_11x11");
static_assert(op::dil_conv<3, 2>::name == "dil_conv_3x3" &&
              op::dil_conv<5>::name == "dil_conv_5x5");
static_assert(op::dil_conv<3, 4>::name == "dil_conv_3x3_d4");
static_assert(op::conv<1>::name == "nor_conv_1x1" && op::conv<3>::name == "nor_conv_3x3");

static_assert(DartsOps::size == 8);
static_assert(DartsOps::names[0] == "none" && DartsOps::names[3] == "skip_connect" &&
              DartsOps::names[7] == "dil_conv_5x5");
static_assert(DartsOps::index_of("sep_conv_5x5") == 5 && DartsOps::index_of("nor_conv_3x3") == -1);
static_assert(DartsOps::contains<op::skip> && !DartsOps::contains<op::conv<3>>);
static_assert(DartsOps::index_of_op<op::avg_pool<3>> == 2 &&
              DartsOps::index_of_op<op::conv<1>> == -1);
static_assert(DartsOps::has_none && DartsOps::none_index == 0 && DartsOps::derivable == 7);
static_assert(std::is_same_v<DartsOps::op<4>, op::sep_conv<3>>);
static_assert(DartsOps::params(4, 16) == op::sep_conv<3>::params(16));
static_assert(DartsOps::flops(6, 16, 8, 8, 2) == op::dil_conv<3>::flops(16, 8, 8, 2));

static_assert(Darts::kind == SpaceKind::darts && Nb201::kind == SpaceKind::nb201);
static_assert(DartsSpace<Darts> && !DartsSpace<Nb201> && Nb201Space<Nb201>);
static_assert(Darts::edges == 14 && Darts::kept_edges == 8 && Darts::states == 6);
// Per cell: C(2,2) * C(3,2) * C(4,2) * C(5,2) = 180 edge choices, 7^8 op choices.
static_assert(Darts::cell_space_size_exact == 180ull * 5764801ull);
static_assert(Darts::space_size_exact == 180ull * 5764801ull * 180ull * 5764801ull);
static_assert(Darts::space_size >= 1.0e18 && Darts::space_size <= 1.1e18);
static_assert(Nb201::edges == 6 && Nb201::space_size_exact == 15625 && Nb201::space_size == 15625);
static_assert(Nb201Ops::names[0] == "none" && Nb201Ops::names[1] == "skip_connect" &&
              Nb201Ops::names[2] == "nor_conv_1x1" && Nb201Ops::names[3] == "nor_conv_3x3" &&
              Nb201Ops::names[4] == "avg_pool_3x3");

// Without `none` every op is derivable; with more nodes the count overflows 64 bits.
using NoNone = op_set<op::skip, op::sep_conv<3>>;
static_assert(darts_cell<NoNone, 2, 1>::cell_space_size_exact == 2 * 3 * 2 * 2);
static_assert(!darts_cell<DartsOps, 8, 2>::space_size_exact.has_value());
static_assert(darts_cell<DartsOps, 8, 2>::space_size > 1e40);

// The edge tables, in DARTS' and NB201's order.
static_assert(Darts::edge_table[0] == Edge{0, 2} && Darts::edge_table[1] == Edge{1, 2} &&
              Darts::edge_table[2] == Edge{0, 3} && Darts::edge_table[4] == Edge{2, 3} &&
              Darts::edge_table[13] == Edge{4, 5});
static_assert(Darts::edge_index(3, 4) == 13 && Darts::first_edge(2) == 5);
static_assert(Nb201::edge_table[0] == Edge{0, 1} && Nb201::edge_table[2] == Edge{1, 2} &&
              Nb201::edge_table[5] == Edge{2, 3});
static_assert(Nb201::edge_index(3, 1) == 4);

TEST_CASE("edge tables cover every (from < to) pair once, node by node") {
  for (int e = 0; e < Darts::edges; ++e) {
    const Edge ed = Darts::edge_table[e];
    CHECK(ed.from < ed.to);
    CHECK(Darts::edge_index(ed.to - 2, ed.from) == e);
  }
  for (int e = 0; e < Nb201::edges; ++e) {
    const Edge ed = Nb201::edge_table[e];
    CHECK(Nb201::edge_index(ed.to, ed.from) == e);
  }
}

TEST_CASE("op_set: names, lookup, for_each visits each type once in order") {
  CHECK(DartsOps::known() ==
        "none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, "
        "dil_conv_3x3, dil_conv_5x5");
  std::vector<std::string> seen;
  Nb201Ops::for_each([&]<class Op, int I>(std::type_identity<Op>, std::integral_constant<int, I>) {
    CHECK(Nb201Ops::names[I] == Op::name);
    seen.emplace_back(Op::name);
  });
  CHECK(seen.size() == 5);
  CHECK(op::find("sep_conv_7x7") != nullptr);
  CHECK(op::find("sep_conv_9x9") == nullptr);
  CHECK(!op::find("max_pool_3x3")->parametric);
  CHECK(throws_with([] { (void)DartsOps::name(8); }, {"op index 8", "8 ops"}));
  Rng rng(1);
  CHECK(throws_with([&] { (void)DartsOps::build("conv_7x1_1x7", 16, 1, true, rng); },
                    {"unknown op 'conv_7x1_1x7'", "sep_conv_3x3"}));
  CHECK(throws_with([&] { (void)DartsOps::build(4, 16, 3, true, rng); },
                    {"stride = 3", "stride 1 or 2"}));
}

// ---- building the modules ----------------------------------------------------------------------

// Every op of OpSet at stride 1 and 2, affine on and off: [2, C, 7, 7] -> [2, C, 7, 7] or
// [2, C, 4, 4], and the parameter count the type predicts.
template <class OpSet>
void check_builds(int64_t C) {
  Rng rng(7);
  Tensor x = Tensor::randn({2, C, 7, 7}, rng);
  for (int i = 0; i < OpSet::size; ++i)
    for (int stride : {1, 2})
      for (bool affine : {true, false}) {
        INFO(OpSet::names[i], " stride ", stride, " affine ", affine);
        auto m = OpSet::build(i, C, stride, affine, rng);
        REQUIRE(m);
        const int64_t hw = stride == 1 ? 7 : 4;
        CHECK(m->forward(x).shape() == Shape{2, C, hw, hw});
        CHECK(m->num_parameters() == OpSet::params(i, C, stride, affine));
      }
}

TEST_CASE("every DARTS and NB201 op builds with the right shapes and parameter counts") {
  check_builds<DartsOps>(8);
  check_builds<Nb201Ops>(6);
  check_builds<op_set<op::sep_conv<7>, op::conv<7>, op::dil_conv<3, 3>, op::max_pool<5>>>(4);
}

TEST_CASE("module kinds follow DARTS' operations.py") {
  Rng rng(3);
  CHECK(op::skip::build(8, 1, true, rng)->name() == "Identity()");
  CHECK(op::skip::build(8, 2, false, rng)->name() == "FactorizedReduce(8, 8, affine=False)");
  CHECK(op::none::build(8, 2, true, rng)->name() == "Zero(stride=2)");
  CHECK(op::max_pool<3>::build(8, 2, true, rng)->name() ==
        "MaxPool2d(kernel_size=3, stride=2, padding=1)");
  CHECK(op::dil_conv<5>::build(8, 1, true, rng)->name() ==
        "DilConv(8, 8, kernel_size=5, stride=1, padding=4, dilation=2, affine=True)");
  CHECK(op::sep_conv<5>::build(8, 2, true, rng)->name() ==
        "SepConv(8, 8, kernel_size=5, stride=2, padding=2, affine=True)");
  CHECK(op::conv<3>::build(8, 1, false, rng)->name() ==
        "ReLUConvBN(8, 8, kernel_size=3, stride=1, padding=1, affine=False)");
}

TEST_CASE("flops: multiply-accumulates per C x H x W input") {
  // sep_conv_3x3, C = 16, 8x8, stride 1: two (depthwise 9 + pointwise 16) MACs per channel and
  // pixel.
  CHECK(op::sep_conv<3>::flops(16, 8, 8) == 2 * 64 * 16 * (9 + 16));
  // At stride 2 the output is 4x4 (ceil(7 / 2) = 4 for odd sizes).
  CHECK(op::conv<3>::flops(16, 7, 7, 2) == 16 * 16 * 9 * 16);
  CHECK(op::skip::flops(16, 8, 8, 1) == 0);
  CHECK(op::skip::flops(16, 8, 8, 2) == 16 * 16 * 16);
  CHECK(op::avg_pool<3>::flops(16, 8, 8) == 16 * 9 * 64);
  CHECK(op::none::flops(16, 8, 8) == 0);
}

// ---- DARTS genotypes ---------------------------------------------------------------------------

using tnas::testing::kDartsV2;

TEST_CASE("DARTS genotype: DARTS_V2 round trips exactly") {
  DartsGenotype g = DartsGenotype::parse(kDartsV2);
  CHECK(g.normal.size() == 8);
  CHECK(g.normal[7] == DartsGenotype::Entry{"dil_conv_3x3", 2});
  CHECK(g.reduce[2] == DartsGenotype::Entry{"skip_connect", 2});
  CHECK(g.normal_concat == std::vector<int>{2, 3, 4, 5});
  CHECK(g.str() == kDartsV2);
  CHECK(DartsGenotype::parse(g.str()) == g);
  g.validate<Darts>();
  CHECK_NOTHROW(parse_genotype<Darts>(kDartsV2));
  // Collapse watch: parameter-free ops per cell.
  CHECK(g.parameter_free_ops(CellType::normal) == 2);
  CHECK(g.parameter_free_ops(CellType::reduce) == 8);
  CHECK(g.parameter_free_ops() == 10);
  CHECK(g.count("skip_connect") == 2);
  CHECK(g.count("max_pool_3x3", CellType::reduce) == 5);
}

TEST_CASE("DARTS genotype: genotypes.py spellings (range, double quotes, spacing)") {
  // DARTS_V1 as genotypes.py writes it, with range(2, 6) concats.
  const std::string v1 =
      "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
      "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
      "('skip_connect', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
      "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
      "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
      "reduce_concat=range(2, 6))";
  DartsGenotype g = parse_genotype<Darts>(v1);
  CHECK(g.normal_concat == std::vector<int>{2, 3, 4, 5});
  CHECK(g.reduce_concat == std::vector<int>{2, 3, 4, 5});
  std::string canon = v1;
  for (auto at = canon.find("range(2, 6)"); at != std::string::npos; at = canon.find("range(2, 6)"))
    canon.replace(at, 11, "[2, 3, 4, 5]");
  CHECK(g.str() == canon);

  std::string dq = kDartsV2;
  for (char& ch : dq)
    if (ch == '\'') ch = '"';
  CHECK(DartsGenotype::parse(dq).str() == kDartsV2);
  CHECK(DartsGenotype::parse(
            "  Genotype( reduce_concat = [2,3,4,5,], reduce=[(\"max_pool_3x3\",0),],\n"
            "normal=[('sep_conv_3x3',0)], normal_concat=range(2,6) )\n")
            .str() ==
        "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])");
}

TEST_CASE("DARTS genotype: malformed text names the problem and the character") {
  auto bad = [](std::string s, std::vector<std::string> parts) {
    INFO(s);
    CHECK(throws_with([&] { (void)DartsGenotype::parse(s); }, parts));
  };
  bad("", {"DARTS genotype", "expected '('", "character 1"});
  bad("Genotype(normal=[('sep_conv_3x3', 0)]", {"expected ')' or ','", "the end of the text"});
  bad("Genotype(normal=[('sep_conv_3x3' 0)])",
      {"expected ','", "after the op name", "character 34"});
  bad("Genotype(normal=[('sep_conv_3x3, 0)])", {"unterminated string", "character 19"});
  bad("Genotype(normal=[(sep_conv_3x3, 0)])", {"expected a quoted op name", "character 19"});
  bad("Genotype(normal=[('a', x)])", {"expected the input index (an integer)", "character 24"});
  bad("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[], normal=[])",
      {"field 'normal' appears twice", "character 68"});
  bad("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[], foo=[])",
      {"unknown field 'foo'"});
  bad("Genotype(normal=[], normal_concat=[], reduce=[])", {"the field 'reduce_concat' is missing"});
  bad("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[]) x",
      {"unexpected text after the closing ')'"});
  bad("Genotype(normal=[], normal_concat=[2, 3 4], reduce=[], reduce_concat=[])",
      {"expected ']' or ','", "'normal_concat'"});
  bad("Genotype(normal=[], normal_concat=range(2 6), reduce=[], reduce_concat=[])",
      {"expected ')' to close 'range('"});
  bad("Genotype(normal=[('a', 12345678901)], normal_concat=[], reduce=[], reduce_concat=[])",
      {"too many digits"});
}

TEST_CASE("DARTS genotype: validation errors say what and where") {
  auto invalid = [](const std::string& s, std::vector<std::string> parts) {
    INFO(s);
    DartsGenotype g = DartsGenotype::parse(s);
    CHECK(throws_with([&] { g.validate<Darts>(); }, parts));
  };
  auto with = [](std::string s, const std::string& from, const std::string& to) {
    auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  // The sixth normal entry (entry 5, node 2).
  invalid(with(kDartsV2, "('skip_connect', 0), ('skip_connect', 0)",
               "('sep_conv_7x7', 0), ('skip_connect', 0)"),
          {"unknown op 'sep_conv_7x7' in normal cell, node 2 (entry 5)", "known ops: none, ",
           "dil_conv_5x5"});
  invalid(with(kDartsV2, "('dil_conv_3x3', 2)", "('dil_conv_3x3', 6)"),
          {"input 6 of normal cell, node 3 (entry 7) is out of range", "states 0..4"});
  invalid(with(kDartsV2, "('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2)",
               "('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 3)"),
          {"input 3 of reduce cell, node 1 (entry 2)"});
  invalid(with(kDartsV2, "('skip_connect', 0), ('dil_conv_3x3', 2)",
               "('skip_connect', 0), ('dil_conv_3x3', 0)"),
          {"normal cell, node 3 takes input 0 twice (entries 6 and 7)"});
  invalid(with(kDartsV2, ", ('dil_conv_3x3', 2)", ""),
          {"the normal cell has 7 entries, expected 8 (4 nodes x 2 inputs kept per node)"});
  invalid(with(kDartsV2, "('dil_conv_3x3', 2)", "('none', 2)"),
          {"op 'none' in normal cell, node 3 (entry 7)"});
  invalid(with(kDartsV2, "normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 6]"),
          {"normal_concat holds 6", "states 2..5"});
  invalid(with(kDartsV2, "reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 3, 3]"),
          {"reduce_concat lists state 3 twice"});
  // A smaller space accepts fewer ops.
  DartsGenotype g = DartsGenotype::parse(kDartsV2);
  CHECK(throws_with([&] { g.validate<darts_cell<op_set<op::none, op::sep_conv<3>>>>(); },
                    {"unknown op 'skip_connect' in normal cell, node 2 (entry 5)",
                     "known ops: none, sep_conv_3x3"}));
  CHECK(throws_with([&] { g.validate(DartsOps::names, 4, 1); }, {"has 8 entries, expected 4"}));
}

TEST_CASE("DARTS genotype: JSON round trip and errors") {
  DartsGenotype g = DartsGenotype::parse(kDartsV2);
  nlohmann::json j = g;
  CHECK(j["normal"][7] == nlohmann::json::array({"dil_conv_3x3", 2}));
  CHECK(j["reduce_concat"] == nlohmann::json::array({2, 3, 4, 5}));
  CHECK(j["darts"] == kDartsV2);
  CHECK(j.get<DartsGenotype>() == g);
  CHECK(nlohmann::json::parse(j.dump()).get<DartsGenotype>() == g);
  // The notation alone is enough.
  CHECK(nlohmann::json{{"darts", kDartsV2}}.get<DartsGenotype>() == g);

  auto bad = [](const nlohmann::json& jj, std::vector<std::string> parts) {
    INFO(jj.dump());
    CHECK(throws_with([&] { (void)jj.get<DartsGenotype>(); }, parts));
  };
  bad(nlohmann::json::array(), {"must be an object", "array"});
  bad(nlohmann::json::object(), {"lacks the key \"darts\""});
  nlohmann::json k = j;
  k.erase("reduce_concat");
  bad(k, {"lacks the key \"reduce_concat\""});
  k = j;
  k["normal"][3] = nlohmann::json::array({"sep_conv_3x3"});
  bad(k, {"\"normal\"[3] must be [\"op\", input]"});
  k = j;
  k["normal"][3][1] = 2;
  bad(k, {"the \"darts\" string and the normal/reduce arrays disagree"});
  k = j;
  k["reduce_concat"][0] = "2";
  bad(k, {"\"reduce_concat\"[0] must be an integer"});
  bad(nlohmann::json{{"darts", "Genotype(normal=["}}, {"DARTS genotype", "character"});

  auto dir = std::filesystem::temp_directory_path() / "tnas_test_space";
  std::filesystem::create_directories(dir);
  g.save_json(dir / "g.json");
  CHECK(DartsGenotype::load_json(dir / "g.json") == g);
  { std::ofstream(dir / "broken.json") << "{\"normal\": ["; }
  CHECK(throws_with([&] { (void)DartsGenotype::load_json(dir / "broken.json"); },
                    {"is not valid JSON"}));
  CHECK(
      throws_with([&] { (void)DartsGenotype::load_json(dir / "missing.json"); }, {"cannot open"}));
}

TEST_CASE("DARTS genotype: DOT like visualize.py") {
  DartsGenotype g = DartsGenotype::parse(kDartsV2);
  const std::string n = g.dot(CellType::normal), r = g.dot(CellType::reduce);
  CHECK(n.find("digraph normal {") == 0);
  CHECK(n.find("\"c_{k-2}\" -> \"0\" [label=\"sep_conv_3x3\"") != std::string::npos);
  CHECK(n.find("\"0\" -> \"3\" [label=\"dil_conv_3x3\"") != std::string::npos);
  CHECK(n.find("\"3\" -> \"c_{k}\"") != std::string::npos);
  CHECK(r.find("label=\"max_pool_3x3\"") != std::string::npos);
  CHECK(r.find("sep_conv") == std::string::npos);

  auto dir = std::filesystem::temp_directory_path() / "tnas_test_space";
  std::filesystem::create_directories(dir);
  g.write_dot(dir / "normal.dot");
  std::ifstream f(dir / "normal.dot");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(text == n);
  // Renders only where Graphviz is installed; either way it does not throw.
  const bool rendered = render_png(dir / "normal.dot");
  CHECK(rendered == std::filesystem::exists(dir / "normal.png"));
  if (!dot_on_path()) CHECK(!rendered);
  CHECK(throws_with([&] { g.write_dot(dir / "no" / "such" / "dir.dot"); }, {"cannot open"}));
}

// ---- NB201 genotypes ---------------------------------------------------------------------------

TEST_CASE("NB201 genotype: round trips") {
  // Rows 0-3 of nb201.csv.
  for (std::string s :
       {"|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|"
        "skip_connect~2|",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
        "skip_connect~2|",
        "|avg_pool_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|"
        "avg_pool_3x3~2|",
        "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|"}) {
    INFO(s);
    Nb201Genotype g = parse_genotype<Nb201>(s);
    CHECK(g.str() == s);
    CHECK(Nb201Genotype::parse(g.str()) == g);
    CHECK(nlohmann::json(g).get<Nb201Genotype>() == g);
    auto idx = g.op_indices<Nb201Ops>();
    CHECK(Nb201Genotype::from_op_indices<Nb201Ops>(idx) == g);
  }
  Nb201Genotype g = Nb201Genotype::parse(
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
      "skip_connect~2|");
  CHECK(g.ops[2] == "avg_pool_3x3");  // edge 2 <- 1
  CHECK(g.ops[3] == "skip_connect");  // edge 3 <- 0
  CHECK(g.op_indices<Nb201Ops>() == std::array<int, 6>{3, 3, 4, 1, 3, 1});
  CHECK(g.parameter_free_ops() == 3);
  CHECK(Nb201Genotype::parse("  " + g.str() + "\n") == g);
}

TEST_CASE("NB201 genotype: every arch of nb201.csv round trips") {
  const char* env = std::getenv("TNAS_NB201_CSV");
  // CI clones the repository with shared/ beside it.
  std::filesystem::path path = env ? env : TNAS_SOURCE_DIR "/../shared/data/nb201/nb201.csv";
  std::ifstream f(path);
  if (!f) {
    MESSAGE("skipped: no NB201 table at ", path.string(), " (set TNAS_NB201_CSV)");
    return;
  }
  std::string line;
  std::getline(f, line);
  std::set<std::string> seen;
  int rows = 0, bad = 0;
  while (std::getline(f, line)) {
    const auto a = line.find(','), b = line.find(',', a + 1);
    const std::string arch = line.substr(a + 1, b - a - 1);
    Nb201Genotype g = parse_genotype<Nb201>(arch);
    bad += g.str() != arch;
    seen.insert(arch);
    ++rows;
  }
  CHECK(bad == 0);
  CHECK(rows == 15625);
  CHECK(seen.size() == 15625);
}

TEST_CASE("NB201 genotype: malformed strings name the problem and the character") {
  auto bad = [](std::string s, std::vector<std::string> parts) {
    INFO(s);
    CHECK(throws_with([&] { (void)Nb201Genotype::parse(s); }, parts));
  };
  const std::string ok =
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
      "skip_connect~2|";
  bad("", {"NB201 arch string", "expected '|' to open the edges of node 1", "character 1"});
  bad("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",
      {"has 2 node groups, expected 3 (nodes 1..3 of a 4-node cell)"});
  bad(ok + "+|none~0|none~1|none~2|none~3|", {"more than 3 node groups", "character 96"});
  bad("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
      {"node 2 has 1 edge, expected 2", "character 18"});
  bad("|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|a~0|b~1|c~2|",
      {"node 1 has more than 1 edge (one from each earlier node)", "character 17"});
  bad("|nor_conv_3x3~0|+|nor_conv_3x3~1|avg_pool_3x3~0|+|skip_connect~0|nor_conv_3x3~1|"
      "skip_connect~2|",
      {"the edge 'nor_conv_3x3~1' of node 2 reads from node 1, expected 0", "character 32"});
  bad("|nor_conv_3x3-0|+|a~0|b~1|+|a~0|b~1|c~2|",
      {"expected '~' after the op name 'nor_conv_3x3'", "character 14"});
  bad("|nor_conv_3x3~x|+|a~0|b~1|+|a~0|b~1|c~2|", {"expected the source node", "character 15"});
  bad("|nor_conv_3x3~0+|a~0|b~1|+|a~0|b~1|c~2|", {"expected '|' after the edge 'nor_conv_3x3~0'"});
  bad("|nor_conv_3x3~0|+|a~0| b~1|+|a~0|b~1|c~2|", {"white space inside", "character 23"});
  bad("|~0|+|a~0|b~1|+|a~0|b~1|c~2|", {"expected an op name", "character 2"});
  bad(ok + "x", {"node 3 has more than 3 edges", "expected '+' or the end", "character 96"});

  Nb201Genotype g = Nb201Genotype::parse(
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_5x5~1|"
      "skip_connect~2|");
  CHECK(throws_with([&] { g.validate<Nb201>(); },
                    {"unknown op 'nor_conv_5x5' on edge 3<-1 (entry 4)",
                     "known ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3"}));
  CHECK(throws_with([&] { (void)parse_genotype<Nb201>(g.str()); }, {"nor_conv_5x5"}));
  CHECK(throws_with([&] { (void)g.op_indices<Nb201Ops>(); }, {"nor_conv_5x5"}));
  CHECK(throws_with([&] { (void)g.parameter_free_ops(); },
                    {"unknown op 'nor_conv_5x5'", "cannot tell"}));
}

TEST_CASE("NB201 genotype: JSON and DOT") {
  Nb201Genotype g = Nb201Genotype::parse(
      "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|");
  nlohmann::json j = g;
  CHECK(j["arch"] == g.str());
  CHECK(j["ops"].size() == 6);
  CHECK(j["ops"][2] == "none");
  CHECK(j.get<Nb201Genotype>() == g);
  CHECK(nlohmann::json{{"ops", j["ops"]}}.get<Nb201Genotype>() == g);
  CHECK(nlohmann::json{{"arch", j["arch"]}}.get<Nb201Genotype>() == g);

  auto bad = [](const nlohmann::json& jj, std::vector<std::string> parts) {
    INFO(jj.dump());
    CHECK(throws_with([&] { (void)jj.get<Nb201Genotype>(); }, parts));
  };
  bad(nlohmann::json(3), {"NB201 genotype JSON must be an object"});
  bad(nlohmann::json::object(), {"lacks the key \"arch\""});
  bad(nlohmann::json{{"ops", {"none"}}}, {"\"ops\" must be an array of 6 op names"});
  bad(nlohmann::json{{"arch", 5}}, {"\"arch\" must be a string"});
  nlohmann::json k = j;
  k["ops"][0] = "none";
  bad(k, {"\"arch\" and \"ops\" disagree"});
  bad(nlohmann::json{{"arch", "|a~0|"}}, {"NB201 arch string", "has 1 node group, expected 3"});

  const std::string d = g.dot();
  CHECK(d.find("\"0\" -> \"1\" [label=\"avg_pool_3x3\"") != std::string::npos);
  CHECK(d.find("\"2\" -> \"3\" [label=\"skip_connect\"") != std::string::npos);
  CHECK(d.find("\"1\" -> \"2\" [label=\"none\" style=dotted") != std::string::npos);
}
