// Evaluation networks from genotypes (DARTS' NetworkCIFAR, NAS-Bench-201's TinyNetwork) and
// the trainer: shapes, parameter counts against the published figures, drop path, learning on
// a separable toy set, exact resume from a checkpoint, corrupt checkpoints.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "testing.hpp"
#include "tnas/train/fit.hpp"
#include "tnas/train/network.hpp"

namespace fs = std::filesystem;
using namespace tnas;
using tnas::testing::kDartsV2;
using tnas::testing::quadrants;
using tnas::testing::throws_with;

namespace {

constexpr const char* kResNetLike =
    "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|";
constexpr const char* kAllConv =
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~"
    "2|";

space::DartsGenotype darts_v2() {
  return space::DartsGenotype::parse(kDartsV2);
}

Tensor random_images(int64_t n, int64_t c, int64_t hw, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn({n, c, hw, hw}, rng);
}

}  // namespace

// ---- DartsNetwork ---------------------------------------------------------------------------

TEST_CASE("DartsNetwork: DARTS_V2 at C=36, 20 cells has DARTS' published 3.3M parameters") {
  train::DartsNetworkConfig cfg{.in_channels = 3, .channels = 36, .cells = 20, .classes = 10};
  cfg.auxiliary = false;
  train::DartsNetwork plain(darts_v2(), cfg);
  cfg.auxiliary = true;
  train::DartsNetwork aux(darts_v2(), cfg);
  const int64_t n = plain.num_parameters(), n_aux = aux.num_parameters();
  MESSAGE("DARTS_V2 C=36 L=20: ", n, " parameters without the auxiliary head, ", n_aux,
          " with it (head: ", aux.num_auxiliary_parameters(), "); ", plain.flops(32, 32),
          " MACs at 32x32");
  // DARTS' train.py logs "param size = 3.349342MB" (utils.count_parameters_in_MB, which skips
  // every parameter whose name holds "auxiliary").
  CHECK(n == 3349342);
  CHECK(n_aux - aux.num_auxiliary_parameters() == n);
  // AuxiliaryHeadCIFAR(576, 10): conv 576*128 + BN 256 + conv 128*768*2*2 + BN 1536 + linear
  // 768*10 + 10.
  CHECK(aux.num_auxiliary_parameters() == 576 * 128 + 256 + 128 * 768 * 4 + 1536 + 7680 + 10);
  CHECK(aux.auxiliary_map_size() == 8);
}

TEST_CASE("DartsNetwork: output shapes for 28x28x1 and 32x32x3, with and without the head") {
  for (int64_t hw : {28, 32}) {
    const int64_t in = hw == 28 ? 1 : 3;
    for (bool aux : {false, true}) {
      CAPTURE(hw);
      CAPTURE(aux);
      train::DartsNetwork net(darts_v2(), {.in_channels = in,
                                           .channels = 4,
                                           .cells = 3,
                                           .classes = 7,
                                           .auxiliary = aux,
                                           .drop_path_prob = 0.2,
                                           .image_size = hw,
                                           .seed = 3});
      Tensor x = random_images(2, in, hw, 1);
      net.train();
      Tensor y = net.forward(x);
      CHECK(y.shape() == Shape{2, 7});
      CHECK(net.last_aux_logits().defined() == aux);
      if (aux) {
        CHECK(net.last_aux_logits().shape() == Shape{2, 7});
        CHECK(net.auxiliary_map_size() == (hw == 28 ? 7 : 8));
        backward(sum(y) + sum(net.last_aux_logits()));  // both heads reach the stem
        CHECK(net.named_parameters().front().second.grad().defined());
        net.clear_aux_logits();
        CHECK(!net.last_aux_logits().defined());
      }
      net.eval();
      NoGrad ng;
      CHECK(net.forward(x).shape() == Shape{2, 7});
      CHECK(!net.last_aux_logits().defined());
      CHECK(net.flops(hw, hw) > 0);
    }
  }
  // The head refuses an input size it was not built for, naming the size.
  train::DartsNetwork net(darts_v2(), {.in_channels = 1,
                                       .channels = 4,
                                       .cells = 3,
                                       .classes = 3,
                                       .auxiliary = true,
                                       .image_size = 8});
  CHECK(throws_with([&] { net.forward(random_images(2, 1, 16, 2)); }, {"image_size", "8x8"}));
  CHECK(throws_with([&] { net.forward(random_images(2, 3, 8, 2)); }, {"DartsNetwork", "[N, 1,"}));
  // A genotype that is not valid for the DARTS op set is refused.
  auto bad = darts_v2();
  bad.normal[3].first = "conv_9x9";
  CHECK(throws_with([&] { train::DartsNetwork(bad, {.channels = 4, .cells = 3}); },
                    {"unknown op 'conv_9x9'", "normal cell"}));
}

TEST_CASE("DartsNetwork: the full-size DARTS_V2 runs a 32x32 image") {
  train::DartsNetwork net(darts_v2(), {.channels = 36, .cells = 20, .classes = 10});
  net.eval();
  NoGrad ng;
  CHECK(net.forward(random_images(1, 3, 32, 5)).shape() == Shape{1, 10});
}

TEST_CASE("DartsNetwork: drop path changes training outputs, never evaluation outputs") {
  train::DartsNetwork net(darts_v2(), {.in_channels = 1,
                                       .channels = 4,
                                       .cells = 3,
                                       .classes = 5,
                                       .drop_path_prob = 0.0,
                                       .seed = 9});
  Tensor x = random_images(8, 1, 8, 4);
  NoGrad ng;
  net.train();
  Tensor a = net.forward(x), b = net.forward(x);
  CHECK(max_abs_diff(a, b) == 0);  // no drop path: batch statistics make it deterministic
  net.set_drop_path_prob(0.5);
  Tensor c = net.forward(x), d = net.forward(x);
  CHECK(max_abs_diff(a, c) > 1e-4);
  CHECK(max_abs_diff(c, d) > 1e-4);  // fresh masks each forward
  net.eval();
  Tensor e = net.forward(x);
  net.set_drop_path_prob(0.0);
  Tensor f = net.forward(x);
  CHECK(max_abs_diff(e, f) == 0);
  CHECK(throws_with([&] { net.set_drop_path_prob(1.0); }, {"drop_path_prob", "[0, 1)"}));

  // The mask is per sample: each sample's map is either all zero or scaled by 1 / keep.
  Rng rng(1);
  Tensor ones = Tensor::ones({64, 2, 3, 3});
  auto v = train::detail::drop_path(ones, 0.25, rng).to_vector();
  int zeros = 0;
  for (int n = 0; n < 64; ++n) {
    const double first = v[size_t(n) * 18];
    CHECK((first == 0 || std::abs(first - 1 / 0.75) < 1e-6));
    for (int k = 0; k < 18; ++k) CHECK(v[size_t(n) * 18 + k] == first);
    zeros += first == 0;
  }
  CHECK(zeros > 4);
  CHECK(zeros < 32);
}

// ---- Nb201Network ---------------------------------------------------------------------------

TEST_CASE("Nb201Network: shapes, NAS-Bench-201's parameter counts, FLOPs") {
  const auto resnet = space::Nb201Genotype::parse(kResNetLike);
  for (int64_t hw : {16, 28}) {
    const int64_t in = hw == 28 ? 1 : 3;
    train::Nb201Network net(resnet, {.in_channels = in, .channels = 4, .cells = 2, .classes = 6});
    Tensor x = random_images(3, in, hw, 7);
    net.train();
    CHECK(net.forward(x).shape() == Shape{3, 6});
    net.eval();
    NoGrad ng;
    CHECK(net.forward(x).shape() == Shape{3, 6});
  }
  // NAS-Bench-201's sizes at C = 16, N = 5, CIFAR-10: the smallest network (no parametric op)
  // has 0.073306M parameters and the largest (nor_conv_3x3 everywhere) 1.531546M.
  const auto all_conv = space::Nb201Genotype::parse(kAllConv);
  const auto all_none =
      space::Nb201Genotype::parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|");
  train::Nb201Network r(resnet, {}), c(all_conv, {}), z(all_none, {});
  MESSAGE("NB201 C=16 N=5: ResNet-like cell ", r.num_parameters(), " parameters, ", r.flops(32, 32),
          " MACs; all nor_conv_3x3 ", c.num_parameters(), ", ", c.flops(32, 32), " MACs; all none ",
          z.num_parameters(), ", ", z.flops(32, 32), " MACs");
  CHECK(z.num_parameters() == 73306);
  CHECK(c.num_parameters() == 1531546);
  // Two nor_conv_3x3 per cell: 2 (9 C^2 + 2C) per cell at C = 16, 32, 64, five cells each.
  CHECK(r.num_parameters() == 73306 + 5 * 2 * (9 * (256 + 1024 + 4096) + 2 * (16 + 32 + 64)));
  // FLOPs by hand: stem 3*16*9*32*32; reduction blocks (conv_a, conv_b, 2x2 pool, 1x1 conv);
  // classifier 64*10; each nor_conv_3x3 is 9 C^2 H W.
  const int64_t base =
      442368 + (1179648 + 2359296 + 16384 + 131072) + (1179648 + 2359296 + 8192 + 131072) + 640;
  CHECK(z.flops(32, 32) == base);
  CHECK(c.flops(32, 32) == base + 3 * 5 * 6 * 2359296);
  CHECK(r.flops(32, 32) == base + 3 * 5 * 2 * 2359296);

  // A node fed only by `none` is zeros; the cell output here is node 3 = skip(node 0) +
  // skip(node 2), node 2 = none(node 0) + none(node 1) = 0, so it is the input itself.
  Rng rng(2);
  train::Nb201InferCell cell(
      space::Nb201Genotype::parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|"
                                  "skip_connect~2|"),
      4, rng);
  Tensor x = random_images(2, 4, 5, 3);
  CHECK(max_abs_diff(cell.forward(x), x) == 0);
  train::Nb201InferCell empty(all_none, 4, rng);
  CHECK(max_abs_diff(empty.forward(x), Tensor::zeros(x.shape())) == 0);
  CHECK(empty.num_parameters() == 0);
  CHECK(throws_with(
      [&] {
        train::Nb201Network(
            space::Nb201Genotype::parse("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
            {});
      },
      {"unknown op 'sep_conv_3x3'"}));
}

// ---- the loss -------------------------------------------------------------------------------

TEST_CASE("smoothed_cross_entropy: plain CE at 0, the smoothed-target CE otherwise") {
  Rng rng(4);
  Tensor logits = Tensor::randn({5, 4}, rng);
  std::vector<int32_t> labels{0, 3, 1, 1, 2};
  CHECK(train::smoothed_cross_entropy(logits, labels, 0).item() ==
        cross_entropy(logits, labels).item());
  auto lp = log_softmax(logits).to_vector();
  const double eps = 0.1;
  double want = 0;
  for (int i = 0; i < 5; ++i)
    for (int k = 0; k < 4; ++k)
      want -= ((k == labels[size_t(i)] ? 1 - eps : 0) + eps / 4) * lp[size_t(i * 4 + k)] / 5;
  CHECK(train::smoothed_cross_entropy(logits, labels, eps).item() ==
        doctest::Approx(want).epsilon(1e-6));
  CHECK(throws_with([&] { train::smoothed_cross_entropy(logits, labels, 1.5); },
                    {"label smoothing"}));
}

// ---- fit ------------------------------------------------------------------------------------

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("tnas_test_train_" + name)) {
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// How many tensors of a's state dict differ from b's (same names and order required).
size_t differing_tensors(const nn::Module& a, const nn::Module& b) {
  auto mine = a.state_dict(), theirs = b.state_dict();
  REQUIRE(mine.size() == theirs.size());
  size_t differ = 0;
  for (size_t i = 0; i < mine.size(); ++i)
    differ += max_abs_diff(mine[i].second, theirs[i].second) != 0;
  return differ;
}

train::DartsNetwork tiny_darts(bool aux) {
  return train::DartsNetwork(darts_v2(), {.in_channels = 1,
                                          .channels = 4,
                                          .cells = 3,
                                          .classes = 4,
                                          .auxiliary = aux,
                                          .drop_path_prob = 0.3,
                                          .image_size = 8,
                                          .seed = 11});
}

}  // namespace

TEST_CASE("fit: learns a separable toy set, logs a CSV and a checkpoint") {
  const data::Dataset tr = quadrants(128, 1), te = quadrants(64, 2);
  TempDir dir("learn");
  train::Nb201Network net(space::Nb201Genotype::parse(kResNetLike),
                          {.in_channels = 1, .channels = 4, .cells = 1, .classes = 4, .seed = 1});
  train::FitOptions o;
  o.epochs = 4;
  o.batch_size = 16;
  o.lr = 0.05;
  o.out_dir = dir.path;
  o.verbose = false;
  o.eval_every = 2;
  const double before = train::evaluate(net, te).accuracy;
  train::FitResult r = train::fit(net, tr, te, o);
  MESSAGE("toy set: eval accuracy ", before, " before, ", r.eval_acc, " after 4 epochs (",
          r.seconds, " s)");
  CHECK(r.eval_acc > 0.6);  // chance is 0.25
  CHECK(r.history.size() == 4);
  CHECK(r.epochs_done == 4);
  CHECK(r.steps == 32);
  CHECK(std::isnan(r.history[0].eval_acc));  // eval_every = 2
  CHECK(!std::isnan(r.history[1].eval_acc));
  CHECK(r.eval_acc == r.history.back().eval_acc);
  CHECK(r.best_epoch >= 2);
  CHECK(r.history.front().lr == doctest::Approx(0.05));
  CHECK(r.history.back().lr < r.history.front().lr);  // cosine
  CHECK(r.history.back().train_loss < r.history.front().train_loss);
  CHECK(!r.stopped_by_budget);
  std::ifstream csv(dir.path / "train_log.csv");
  std::string line;
  std::getline(csv, line);
  CHECK(line == "epoch,lr,train_loss,train_acc,eval_loss,eval_acc,seconds");
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  CHECK(rows == 4);
  CHECK(fs::exists(dir.path / "train.ckpt"));

  // A spent time budget stops before the first step and still reports the model's accuracy.
  train::FitOptions ob = o;
  ob.out_dir.clear();
  ob.budget_seconds = 1e-9;
  train::FitResult rb = train::fit(net, tr, te, ob);
  CHECK(rb.stopped_by_budget);
  CHECK(rb.steps == 0);
  CHECK(rb.history.empty());
  CHECK(rb.eval_acc == doctest::Approx(r.eval_acc));
}

TEST_CASE("fit: a resumed run ends bit for bit where the uninterrupted one does") {
  const data::Dataset tr = quadrants(40, 3), te = quadrants(16, 4);
  train::FitOptions o;
  o.epochs = 2;
  o.batch_size = 16;  // 3 steps per epoch, the last one short
  o.verbose = false;
  o.seed = 5;
  o.label_smoothing = 0.1;
  o.augment = {.crop_padding = 1, .hflip = true, .cutout = 3};

  TempDir straight_dir("straight");
  auto straight = tiny_darts(true);
  o.out_dir = straight_dir.path;
  train::FitResult a = train::fit(straight, tr, te, o);
  REQUIRE(a.history.size() == 2);
  CHECK(a.history[1].drop_path_prob == doctest::Approx(0.15));  // 0.3 * 1 / 2

  auto same = [&](train::DartsNetwork& net, const train::FitResult& r) {
    CHECK(r.history.size() == 2);
    CHECK(r.history.back().train_loss == a.history.back().train_loss);
    CHECK(r.eval_loss == a.eval_loss);
    CHECK(differing_tensors(net, straight) == 0);
    const auto w = net.state_dict().back().second.to_vector();  // classifier.bias
    const auto w0 = straight.state_dict().back().second.to_vector();
    CHECK(std::memcmp(w.data(), w0.data(), w.size() * sizeof(double)) == 0);
  };

  {  // interrupted at an epoch boundary
    TempDir dir("resume_epoch");
    train::FitOptions o1 = o;
    o1.out_dir = dir.path;
    o1.epochs_this_run = 1;
    auto first = tiny_darts(true);
    train::FitResult r1 = train::fit(first, tr, te, o1);
    CHECK(r1.history.size() == 1);
    o1.epochs_this_run = 0;
    o1.resume = true;
    auto second = tiny_darts(true);
    train::FitResult r2 = train::fit(second, tr, te, o1);
    CHECK(r2.resumed);
    CHECK(r2.steps == 3);
    same(second, r2);
  }
  {  // interrupted inside an epoch
    TempDir dir("resume_step");
    train::FitOptions o2 = o;
    o2.out_dir = dir.path;
    o2.max_steps = 4;  // epoch 2, step 1
    auto first = tiny_darts(true);
    train::FitResult r1 = train::fit(first, tr, te, o2);
    CHECK(r1.stopped_by_max_steps);
    CHECK(r1.history.size() == 1);
    o2.max_steps = 0;
    o2.resume = true;
    auto second = tiny_darts(true);
    train::FitResult r2 = train::fit(second, tr, te, o2);
    CHECK(r2.steps == 2);
    same(second, r2);
    std::ifstream csv(dir.path / "train_log.csv");
    std::string line;
    int rows = 0;
    while (std::getline(csv, line)) ++rows;
    CHECK(rows == 3);  // the header and two epochs, none twice
  }
}

TEST_CASE("fit with Adam: learns, resumes bit for bit, and a resume with SGD is an error") {
  const data::Dataset tr = quadrants(40, 3), te = quadrants(16, 4);
  train::FitOptions o;
  o.epochs = 2;
  o.batch_size = 16;
  o.verbose = false;
  o.seed = 7;
  o.optimizer = train::FitOptimizer::adam;
  o.lr = 3e-3;
  o.weight_decay = 1e-4;

  TempDir straight_dir("adam_straight");
  auto straight = tiny_darts(false);
  o.out_dir = straight_dir.path;
  train::FitResult a = train::fit(straight, tr, te, o);
  REQUIRE(a.history.size() == 2);
  CHECK(std::isfinite(a.history.back().train_loss));
  CHECK(a.history.back().train_loss < a.history.front().train_loss);

  TempDir dir("adam_resume");
  train::FitOptions o2 = o;
  o2.out_dir = dir.path;
  o2.max_steps = 4;  // epoch 2, step 1: Adam's moments and step counts must survive
  auto first = tiny_darts(false);
  train::fit(first, tr, te, o2);
  o2.max_steps = 0;
  o2.resume = true;

  train::FitOptions sgd = o2;
  sgd.optimizer = train::FitOptimizer::sgd;
  auto other = tiny_darts(false);
  CHECK(throws_with([&] { train::fit(other, tr, te, sgd); }, {"train.ckpt", "optimizer"}));

  auto second = tiny_darts(false);
  train::FitResult r2 = train::fit(second, tr, te, o2);
  CHECK(r2.resumed);
  CHECK(r2.history.back().train_loss == a.history.back().train_loss);
  CHECK(differing_tensors(second, straight) == 0);
}

TEST_CASE("fit: a corrupt or mismatched checkpoint is an error naming the file") {
  const data::Dataset tr = quadrants(32, 5), te = quadrants(16, 6);
  TempDir dir("corrupt");
  train::FitOptions o;
  o.epochs = 2;
  o.epochs_this_run = 1;
  o.batch_size = 16;
  o.verbose = false;
  o.out_dir = dir.path;
  auto net = tiny_darts(false);
  train::fit(net, tr, te, o);
  const fs::path ckpt = dir.path / "train.ckpt";
  REQUIRE(fs::exists(ckpt));
  o.resume = true;

  train::FitOptions other = o;
  other.seed = 99;
  CHECK(throws_with([&] { train::fit(net, tr, te, other); }, {ckpt.string(), "seed"}));
  train::Nb201Network nb(space::Nb201Genotype::parse(kResNetLike),
                         {.in_channels = 1, .channels = 4, .cells = 1, .classes = 4});
  CHECK(throws_with([&] { train::fit(nb, tr, te, o); }, {ckpt.string()}));

  {
    std::fstream f(ckpt, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(fs::file_size(ckpt) / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(std::streamoff(fs::file_size(ckpt) / 2));
    c = char(c ^ 0x5A);
    f.write(&c, 1);
  }
  CHECK(throws_with([&] { train::fit(net, tr, te, o); }, {ckpt.string(), "corrupt"}));
  fs::resize_file(ckpt, fs::file_size(ckpt) - 100);
  CHECK(throws_with([&] { train::fit(net, tr, te, o); }, {ckpt.string(), "truncated"}));
}
