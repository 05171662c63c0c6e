// tnas-search: the main job. Searches a cell on an IDX image data set (Fashion-MNIST by default)
// with a weight-sharing strategy, retrains the found architecture from scratch on the whole
// training set, and evaluates it on the test set.
//
// stderr carries progress; the LAST LINE ON STDOUT is one JSON object with the genotype, the
// test accuracy of the retrained network, its size and the times. The --out folder holds the
// genotype (text, JSON, DOT), the search and training logs (CSV, per-epoch alphas as JSON
// lines) and the checkpoints; --resume continues a killed run from them.
//
// With --budget-minutes N the whole job (search + retraining) is planned to end in N minutes:
// a short timing run measures this machine's step rate, and epochs are chosen to fit.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tnas/tnas.hpp"
#ifdef TNAS_HAVE_CUDA
#include "tnas/backend/cuda/cuda.hpp"
#endif

using namespace tnas;

namespace {

struct Args {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string space = "darts";
  std::string strategy = "darts";
  bool second_order = false;
  double budget_minutes = 12;
  int epochs = 0;        // search epochs; 0: from the budget
  int64_t channels = 8;  // supernet C
  int64_t cells = 5;     // supernet cells (NB201: cells per stage)
  int64_t batch = 64;
  int64_t search_samples = 5000;  // training images used by the search (split in halves)
  int train_epochs = 0;           // retraining epochs; 0: from the budget
  int64_t train_channels = 8;
  int64_t train_cells = 5;
  int64_t train_batch = 96;
  double search_share = 0.25;  // share of the budget for the search
  uint64_t seed = 2;
  std::string out = "tnas-out";
  bool resume = false;
  std::string device = "cpu";
  bool device_graph = false;
  std::string cuda_conv;  // empty: the backend's default (TNAS_CUDA_CONV, else auto)
  bool quiet = false;
  double temperature = 0;             // softmax temperature of alpha; 0: 1 for darts, 0.5 for bats
  double binary_weight_share = 0.4;   // bats: share of the retraining with binarised weights
  std::string train_optimizer;        // sgd or adam; empty: sgd for darts, adam for bats
  double train_lr = 0;                // 0: 0.05 with SGD, 2e-3 with Adam
  int64_t train_steps_per_epoch = 0;  // cap on the retraining steps per epoch; 0: all
  std::string genotype;  // retrain this architecture (file or DARTS notation); no search
};

// --genotype: a genotype.json, a file with the DARTS notation, or the notation itself.
template <class Genotype>
Genotype given_genotype(const std::string& g) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(g, ec)) {
    if (fs::path(g).extension() == ".json") return Genotype::load_json(g);
    std::ifstream in(g);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    TNAS_CHECK(!in.bad(), "tnas-search: cannot read --genotype file ", g);
    return Genotype::parse(text);
  }
  TNAS_CHECK(g.find('(') != std::string::npos, "tnas-search: --genotype ", g,
             " is neither a file nor a genotype in DARTS notation");
  return Genotype::parse(g);
}

// The retrained DARTS-style network (DARTS or BATS cells) for the data set's shape.
train::DartsNetworkConfig darts_config(const Args& a, const data::Dataset& train_all) {
  return {.in_channels = train_all.channels(),
          .channels = a.train_channels,
          .cells = a.train_cells,
          .classes = train_all.num_classes,
          .drop_path_prob = 0.0,
          .image_size = train_all.height(),
          .seed = a.seed};
}

double temperature(const Args& a) {
  return a.temperature > 0 ? a.temperature : a.strategy == "bats" ? 0.5 : 1.0;
}

// The device of --device, checked: cuda needs a build with the CUDA backend and a GPU.
Device device_of(const Args& a) {
  TNAS_CHECK(a.cuda_conv.empty() || a.device == "cuda",
             "tnas-search: --cuda-conv applies to --device cuda only");
  if (a.device == "cpu") return Device::cpu;
#ifdef TNAS_HAVE_CUDA
  TNAS_CHECK(cuda::available(), "tnas-search: --device cuda: no CUDA device is usable here (",
             cuda::device_count(), " device(s) found)");
  if (!a.cuda_conv.empty()) cuda::set_conv_engine(cuda::parse_conv_engine(a.cuda_conv));
  return Device::cuda;
#else
  TNAS_FAIL("tnas-search: --device ", a.device,
            " needs the CUDA backend, which this build does not have (configure with CUDA)");
#endif
}

// Seconds per step of `step`, from a few timed steps after one warm-up.
template <class F>
double time_steps(F&& step, int n = 3) {
  step();
  const double t0 = train::Progress::now();
  for (int i = 0; i < n; ++i) step();
  return (train::Progress::now() - t0) / n;
}

data::Batch first_batch(const data::Dataset& ds, int64_t batch) {
  data::DataLoader l(ds, {.batch_size = batch, .shuffle = false, .drop_last = true});
  data::Batch b;
  TNAS_CHECK(l.next(b), "tnas-search: the data set holds no full batch of ", batch);
  return b;
}

// The result object (the last line on stdout) and result.json.
template <class Genotype, class Model, class Fitted, class Found>
nlohmann::json finish(const Args& a, const Genotype& g, const std::filesystem::path& out,
                      const Model& model, const Fitted& fitted, const Found& found,
                      double supernet_valid_acc, double search_seconds, double t_start,
                      int train_epochs_done, const nlohmann::json& binary_info) {
  const double total = train::Progress::now() - t_start;

  nlohmann::json j;
  j["genotype"] = g.str();
  j["space"] = a.strategy == "bats" ? "bats (binary DARTS cell)" : a.space;
  j["strategy"] = a.strategy + (a.second_order ? " (second order)" : " (first order)");
  j["temperature"] = temperature(a);
  j["test_accuracy"] = fitted.eval_acc;
  j["test_loss"] = fitted.eval_loss;
  j["supernet_valid_accuracy"] = supernet_valid_acc;
  j["params"] = model.num_parameters();
  j["search_epochs"] = found.epochs_done;
  j["train_epochs"] = train_epochs_done;
  if (!binary_info.is_null()) j["binary"] = binary_info;
  j["param_free_ops"] = g.parameter_free_ops();
  j["search_seconds"] = search_seconds;
  j["total_seconds"] = total;
  j["seed"] = a.seed;
  j["out"] = out.string();
  std::ofstream(out / "result.json") << j.dump(2) << '\n';
  return j;
}

// The weight-sharing search: a supernet of Space trained by DARTS (BATS: binary activations,
// sharpened softmax) on a random subset of the training set, split in halves.
template <class Space>
auto run_search(const Args& a, const data::Dataset& train_all, const std::filesystem::path& out,
                double budget) {
  const int64_t n_search = std::min(a.search_samples, train_all.size());
  auto pool = data::split_train_valid(train_all, n_search, a.seed).valid;  // a random subset
  auto halves = data::split_train_valid(pool, n_search / 2, a.seed + 1);
  search::SupernetConfig scfg{.in_channels = train_all.channels(),
                              .channels = a.channels,
                              .cells = a.cells,
                              .classes = train_all.num_classes,
                              .seed = a.seed};
  const Device dev = device_of(a);
  search::Supernet<Space> net(scfg);
  net.to(dev);
  const search::MixingConfig mixing{search::Mixing::softmax, temperature(a)};
  if constexpr (requires { net.set_mixing(mixing); }) net.set_mixing(mixing);
  search::DartsOptions dopt{.second_order = a.second_order,
                            .batch = a.batch,
                            .out_dir = out / "search",
                            .resume = a.resume,
                            .verbose = !a.quiet,
                            .seed = a.seed,
                            .device_graph = a.device_graph && dev != Device::cpu};
  const int64_t steps_per_epoch = halves.train.size() / a.batch;
  int search_epochs = a.epochs;
  if (search_epochs <= 0) {
    // Plan the search to fill its share of the budget (the cosine schedule then ends on time).
    search::Supernet<Space> probe(scfg);
    probe.to(dev);
    if constexpr (requires { probe.set_mixing(mixing); }) probe.set_mixing(mixing);
    search::Darts<search::Supernet<Space>> pd(probe, dopt);
    data::Batch bt = first_batch(halves.train, a.batch), bv = first_batch(halves.valid, a.batch);
    const double sps = time_steps([&] { pd.step(bt, bv, true); }, 2);
    search_epochs =
        std::max<int>(1, int(budget * a.search_share / (sps * double(steps_per_epoch) * 1.1)));
    std::fprintf(stderr, "plan: search step %.2fs -> %d search epoch(s) of %lld steps\n", sps,
                 search_epochs, (long long)steps_per_epoch);
  }
  dopt.epochs = search_epochs;
  dopt.budget_seconds = budget > 0 ? budget * a.search_share * 1.15 : 0;
  search::Darts<search::Supernet<Space>> darts(net, dopt);
  return darts.run(halves.train, halves.valid);
}

template <class Space, class EvalNet, class EvalConfig>
nlohmann::json run(const Args& a, const data::Dataset& train_all, const data::Dataset& test,
                   EvalConfig eval_cfg) {
  namespace fs = std::filesystem;
  const double t_start = train::Progress::now();
  const double budget = a.budget_minutes * 60.0;
  const fs::path out = a.out;
  fs::create_directories(out);

  // ---- search (or the architecture given with --genotype) ---------------------------------
  using Found = decltype(run_search<Space>(a, train_all, out, budget));
  Found found;
  if (!a.genotype.empty()) {
    found.genotype = given_genotype<decltype(found.genotype)>(a.genotype);
    std::fprintf(stderr, "architecture from --genotype (no search): %s\n",
                 found.genotype.str().c_str());
  } else {
    found = run_search<Space>(a, train_all, out, budget);
  }
  const double search_seconds = train::Progress::now() - t_start;
  const auto& g = found.genotype;
  {
    std::ofstream(out / "genotype.txt") << g.str() << '\n';
    g.save_json(out / "genotype.json");
    if constexpr (Space::kind == space::SpaceKind::darts) {
      g.write_dot(out / "normal.dot", space::CellType::normal);
      g.write_dot(out / "reduce.dot", space::CellType::reduce);
      space::render_png(out / "normal.dot");
      space::render_png(out / "reduce.dot");
    } else {
      g.write_dot(out / "cell.dot");
      space::render_png(out / "cell.dot");
    }
  }
  const double supernet_valid_acc =
      found.history.empty() ? 0.0 : found.history.back().supernet_valid_acc;
  if (a.genotype.empty())
    std::fprintf(stderr, "search done in %.0fs: %s\n", search_seconds, g.str().c_str());

  // ---- retrain the found architecture from scratch ------------------------------------------
  const Device dev = device_of(a);
  EvalNet model(g, eval_cfg);
  model.to(dev);
  train::FitOptions fopt;
  fopt.batch_size = a.train_batch;
  const bool adam = a.train_optimizer.empty() ? a.strategy == "bats" : a.train_optimizer == "adam";
  fopt.optimizer = adam ? train::FitOptimizer::adam : train::FitOptimizer::sgd;
  fopt.lr = a.train_lr > 0 ? a.train_lr : adam ? 2e-3 : 0.05;
  if (adam) fopt.weight_decay = 0;
  fopt.nesterov = true;
  fopt.steps_per_epoch = a.train_steps_per_epoch;
  fopt.augment.crop_padding = 2;
  fopt.out_dir = out / "train";
  fopt.resume = a.resume;
  fopt.verbose = !a.quiet;
  fopt.seed = a.seed;
  fopt.eval_every = 0;  // the test set is looked at once, at the end
  const double left = budget > 0 ? budget - (train::Progress::now() - t_start) : 0;
  int train_epochs = a.train_epochs;
  const int64_t train_steps = train_all.size() / a.train_batch;
  if (train_epochs <= 0) {
    TNAS_CHECK(budget > 0, "tnas-search: give --train-epochs or a --budget-minutes");
    data::Batch b = first_batch(train_all, a.train_batch);
    optim::SGD sgd(model.parameters(), {.lr = 1e-9});
    const double sps = time_steps([&] {
      sgd.zero_grad();
      Tensor loss = cross_entropy(model.forward(b.x.to(dev)), b.labels);
      backward(loss);
      sgd.step();
      (void)loss.item();  // on a device: wait for the step, so the timing is the step's
    });
    // Reserve time for the final test evaluation (about a tenth of a training epoch).
    const double usable = left * 0.92;
    const double epoch_s = sps * double(train_steps) * 1.05;
    // Round the number of epochs to the nearest and shorten each one (a shuffled subset of the
    // training set) so that the cosine schedule ends exactly when the budget does.
    train_epochs = std::max(1, int(usable / epoch_s + 0.5));
    const int64_t steps = int64_t(usable / sps / 1.05 / train_epochs);
    const bool partial = steps < train_steps;
    if (partial) fopt.steps_per_epoch = std::max<int64_t>(50, steps);
    std::fprintf(stderr, "plan: train step %.3fs -> %d epoch(s) of %lld steps, %.0fs left\n", sps,
                 train_epochs, (long long)(partial ? fopt.steps_per_epoch : train_steps), left);
    EvalNet fresh(g, eval_cfg);  // the timing steps touched BN statistics; start clean
    model.load_state_dict(fresh.state_dict());
  }
  fopt.epochs = train_epochs;
  fopt.budget_seconds = budget > 0 ? std::max(60.0, left) : 0;
  const bool bats = a.strategy == "bats";
  nlohmann::json binary_info;
  if (bats) {
    // BATS' retraining: binary activations with real weights first, then the weights are
    // binarised (XNOR-Net: sgn(w) * mean|w| per output channel) and training goes on with
    // binary weights (straight-through), so the evaluated network is fully binary: every conv
    // inside the cells runs as an XNOR / popcount kernel at test time. The stem conv and the
    // classifier stay in full precision, as in the paper.
    const int e_bin = std::max(1, int(std::lround(train_epochs * a.binary_weight_share)));
    const int e_real = std::max(1, train_epochs - e_bin);
    train::FitOptions f1 = fopt, f2 = fopt;
    f1.epochs = e_real;
    f1.out_dir = out / "train-real-weights";
    f1.budget_seconds =
        fopt.budget_seconds > 0 ? fopt.budget_seconds * e_real / (e_real + e_bin) : 0;
    f2.epochs = e_bin;
    f2.out_dir = out / "train-binary-weights";
    f2.lr = fopt.lr * 0.2;
    f2.weight_decay = 0;  // decay pulls real weights to 0, where their sign is noise
    std::fprintf(stderr, "bats: %d epoch(s) with real weights, then %d with binarised weights\n",
                 e_real, e_bin);
    auto r1 = train::fit(model, train_all, test, f1);
    const int switched = nn::set_binary_weights(model, true);
    const double left2 = budget > 0 ? budget - (train::Progress::now() - t_start) : 0;
    f2.budget_seconds = budget > 0 ? std::max(60.0, left2) : 0;
    auto fitted_bin = train::fit(model, train_all, test, f2);
    const auto mem = nn::weight_memory(model);
    binary_info = {{"binary_layers", switched},
                   {"real_weight_test_accuracy", r1.eval_acc},
                   {"binary_weight_bytes", mem.binary_bytes},
                   {"float_weight_bytes", mem.float_bytes},
                   {"binary_params", mem.binary_params},
                   {"real_params", mem.real_params}};
    std::fprintf(stderr,
                 "bats: %d binary conv layers; weights %.1f KiB as bits (+ %lld real params: stem, "
                 "BN, classifier) vs %.1f KiB in float32 (%.1fx smaller)\n",
                 switched, mem.binary_bytes / 1024.0, (long long)mem.real_params,
                 mem.float_bytes / 1024.0, double(mem.float_bytes) / double(mem.binary_bytes));
    return finish(a, g, out, model, fitted_bin, found, supernet_valid_acc, search_seconds, t_start,
                  r1.epochs_done + fitted_bin.epochs_done, binary_info);
  }
  auto fitted = train::fit(model, train_all, test, fopt);
  return finish(a, g, out, model, fitted, found, supernet_valid_acc, search_seconds, t_start,
                fitted.epochs_done, binary_info);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"tnas-search: neural architecture search on IDX image data, then retraining"};
  app.add_option("--data", a.data, "directory with MNIST-layout IDX files (train-*, t10k-*)");
  app.add_option("--space", a.space, "search space")->check(CLI::IsMember({"darts", "nb201"}));
  app.add_option("--strategy", a.strategy,
                 "search strategy: darts, or bats (binary cell space, binary activations in the "
                 "search, fully binary retrained network)")
      ->check(CLI::IsMember({"darts", "bats"}));
  app.add_option("--temperature", a.temperature,
                 "softmax temperature of alpha (T < 1 sharpens; 0: 1 for darts, 0.5 for bats)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--binary-weight-share", a.binary_weight_share,
                 "bats: share of the retraining epochs run with binarised weights")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--genotype", a.genotype,
                 "retrain this architecture instead of searching: a genotype.json, a file with "
                 "the DARTS notation, or the notation itself");
  app.add_flag("--second-order", a.second_order, "DARTS' second-order (unrolled) alpha gradient");
  app.add_option("--budget-minutes", a.budget_minutes,
                 "wall-clock plan for search + retraining (epochs are fitted to it); 0: none")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--epochs", a.epochs, "search epochs (0: from the budget)");
  app.add_option("--channels", a.channels, "supernet channels C")->check(CLI::PositiveNumber);
  app.add_option("--cells", a.cells, "supernet cells (nb201: cells per stage)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", a.batch, "search batch size")->check(CLI::PositiveNumber);
  app.add_option("--search-samples", a.search_samples,
                 "training images the search uses (halves: weights / alpha)")
      ->check(CLI::PositiveNumber);
  app.add_option("--train-epochs", a.train_epochs, "retraining epochs (0: from the budget)");
  app.add_option("--train-channels", a.train_channels, "retrained network channels C");
  app.add_option("--train-cells", a.train_cells, "retrained network cells");
  app.add_option("--train-batch", a.train_batch, "retraining batch size");
  app.add_option("--train-optimizer", a.train_optimizer,
                 "retraining optimizer (default: sgd for darts, adam for bats)")
      ->check(CLI::IsMember({"sgd", "adam"}));
  app.add_option("--train-lr", a.train_lr,
                 "initial retraining learning rate (0: 0.05 with sgd, 2e-3 with adam)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--train-steps-per-epoch", a.train_steps_per_epoch,
                 "cap on the retraining steps per epoch, for quick trials (0: the whole set)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--search-share", a.search_share, "share of the budget for the search")
      ->check(CLI::Range(0.05, 0.95));
  app.add_option("--seed", a.seed, "random seed (data split, initialisation, shuffling)");
  app.add_option("--out", a.out, "output folder (genotype, logs, checkpoints)");
  app.add_flag("--resume", a.resume, "continue from the checkpoints in --out");
  app.add_option("--device", a.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--device-graph", a.device_graph,
               "with --device cuda: capture each search step as a CUDA graph and replay it");
  app.add_option("--cuda-conv", a.cuda_conv,
                 "with --device cuda: convolution engine, auto (tnas's kernels for depthwise and "
                 "pointwise, cuDNN for the rest where built with it), native or cudnn "
                 "(default: $TNAS_CUDA_CONV, else auto)")
      ->check(CLI::IsMember({"auto", "native", "cudnn"}));
  app.add_flag("--quiet", a.quiet, "no progress output");
  CLI11_PARSE(app, argc, argv);

  try {
    const Device dev = device_of(a);  // an unusable --device fails here, before the data is read
#ifdef TNAS_HAVE_CUDA
    if (dev == Device::cuda)
      std::fprintf(stderr, "device: cuda, convolution engine %s (cuDNN %s)\n",
                   cuda::to_string(cuda::conv_engine()),
                   cuda::has_cudnn() ? "in this build" : "not in this build");
#else
    (void)dev;
#endif
    const double t0 = train::Progress::now();
    data::Dataset train_all = data::load_idx_dataset(a.data, "train");
    data::Dataset test = data::load_idx_dataset(a.data, "t10k");
    auto st = data::channel_stats(train_all);
    train_all.normalize(st.mean, st.std);
    test.normalize(st.mean, st.std);
    std::fprintf(stderr,
                 "data: %s: %lld train / %lld test images, %lldx%lldx%lld, %d classes (%.1fs)\n",
                 a.data.c_str(), (long long)train_all.size(), (long long)test.size(),
                 (long long)train_all.channels(), (long long)train_all.height(),
                 (long long)train_all.width(), train_all.num_classes, train::Progress::now() - t0);
    nlohmann::json j;
    if (a.strategy == "bats") {
      TNAS_CHECK(a.space == "darts",
                 "tnas-search: --strategy bats searches the binary DARTS-style "
                 "cell space (space::Bats); --space ",
                 a.space, " has no binary version");
      train::DartsNetworkConfig cfg = darts_config(a, train_all);
      cfg.ops = train::cell_ops<space::BatsOps>();
      j = run<space::Bats, train::DartsNetwork>(a, train_all, test, cfg);
    } else if (a.space == "darts") {
      const train::DartsNetworkConfig cfg = darts_config(a, train_all);
      j = run<space::Darts, train::DartsNetwork>(a, train_all, test, cfg);
    } else {
      train::Nb201NetworkConfig cfg{.in_channels = train_all.channels(),
                                    .channels = a.train_channels,
                                    .cells = std::max<int64_t>(1, a.train_cells / 3),
                                    .classes = train_all.num_classes,
                                    .seed = a.seed};
      j = run<space::Nb201, train::Nb201Network>(a, train_all, test, cfg);
    }
    std::fprintf(stderr, "found architecture: %s\nretrained test accuracy: %.4f (%lld params)\n",
                 j["genotype"].get<std::string>().c_str(), j["test_accuracy"].get<double>(),
                 (long long)j["params"].get<int64_t>());
    std::printf("%s\n", j.dump().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "tnas-search: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
