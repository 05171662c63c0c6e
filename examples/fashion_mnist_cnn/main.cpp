// Trains a small CNN on Fashion-MNIST (or any MNIST-layout IDX data set) with tnas's engine:
// conv-BN-ReLU blocks, SGD with Nesterov momentum and a cosine schedule. The last line on stdout
// is a JSON object with the test accuracy.
//
//   fashion_mnist_cnn [--data DIR] [--epochs 3] [--width 16] [--batch 128] [--lr 0.05] [--seed 1]
//
// The network: three conv3x3-BN-ReLU blocks of width w, 2w, 4w channels with 2x2 max pooling
// after the first two, then a linear classifier.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "tnas/tnas.hpp"
#include "tnas/train/evaluate.hpp"

using namespace tnas;

namespace {
std::shared_ptr<nn::Sequential> conv_bn_relu(int64_t cin, int64_t cout, Rng& rng) {
  auto s = std::make_shared<nn::Sequential>();
  s->push_back(std::make_shared<nn::Conv2d>(cin, cout, 3, nn::Conv2dConfig{.padding = 1}, rng));
  s->push_back(std::make_shared<nn::BatchNorm2d>(cout));
  s->push_back(std::make_shared<nn::ReLU>());
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a small CNN on an IDX image data set (Fashion-MNIST by default)"};
  std::string dir = "/usr/share/datasets/fashion-mnist";
  int epochs = 3;
  int64_t width = 16;
  int64_t batch = 128;
  double lr = 0.05;
  uint64_t seed = 1;
  app.add_option("--data", dir, "directory with train-/t10k- images and labels (IDX, .gz or not)");
  app.add_option("--epochs", epochs, "training epochs")->check(CLI::PositiveNumber);
  app.add_option("--width", width, "channels of the first block (then 2x, 4x)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber);
  app.add_option("--lr", lr, "initial learning rate")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "random seed");
  CLI11_PARSE(app, argc, argv);

  try {
    const double t0 = train::Progress::now();
    data::Dataset train_ds = data::load_idx_dataset(dir, "train");
    data::Dataset test_ds = data::load_idx_dataset(dir, "t10k");
    auto st = data::channel_stats(train_ds);
    train_ds.normalize(st.mean, st.std);
    test_ds.normalize(st.mean, st.std);
    std::fprintf(stderr, "data: %lld train, %lld test images of %lldx%lldx%lld, %d classes\n",
                 (long long)train_ds.size(), (long long)test_ds.size(),
                 (long long)train_ds.channels(), (long long)train_ds.height(),
                 (long long)train_ds.width(), train_ds.num_classes);

    Rng rng(seed);
    nn::Sequential net;
    net.push_back(conv_bn_relu(train_ds.channels(), width, rng));
    net.push_back(std::make_shared<nn::MaxPool2d>(2, 2, 0));
    net.push_back(conv_bn_relu(width, 2 * width, rng));
    net.push_back(std::make_shared<nn::MaxPool2d>(2, 2, 0));
    net.push_back(conv_bn_relu(2 * width, 4 * width, rng));
    net.push_back(std::make_shared<nn::Flatten>());
    const int64_t feat = 4 * width * (train_ds.height() / 4) * (train_ds.width() / 4);
    net.push_back(std::make_shared<nn::Linear>(feat, train_ds.num_classes, rng));
    std::fprintf(stderr, "model: %lld parameters\n", (long long)net.num_parameters());

    optim::SGD opt(net.parameters(),
                   {.lr = lr, .momentum = 0.9, .weight_decay = 5e-4, .nesterov = true});
    data::DataLoader loader(
        train_ds, {.batch_size = batch, .shuffle = true, .drop_last = true, .seed = seed});
    const int64_t steps = loader.batches_per_epoch();
    const int64_t total = steps * epochs;
    int64_t done = 0;
    data::Batch b;
    train::EvalResult test{};
    for (int e = 0; e < epochs; ++e) {
      net.train();
      train::Progress prog("epoch " + std::to_string(e + 1) + "/" + std::to_string(epochs), steps);
      double loss_sum = 0;
      for (int64_t s = 0; s < steps && loader.next(b); ++s, ++done) {
        // cosine decay per step, so short runs still end at a small learning rate
        opt.set_lr(lr * 0.5 * (1 + std::cos(M_PI * double(done) / double(total))));
        opt.zero_grad();
        Tensor loss = cross_entropy(net.forward(b.x), b.labels);
        backward(loss);
        opt.step();
        loss_sum += loss.item();
        char buf[32];
        std::snprintf(buf, sizeof buf, "loss %.4f", loss_sum / double(s + 1));
        prog.update(s + 1, buf);
      }
      loader.next(b);  // end of epoch
      test = train::evaluate(net, test_ds);
      std::fprintf(stderr, "epoch %d: train loss %.4f, test accuracy %.4f\n", e + 1,
                   loss_sum / double(steps), test.accuracy);
    }
    std::printf(
        "{\"test_accuracy\": %.4f, \"test_loss\": %.4f, \"params\": %lld, "
        "\"epochs\": %d, \"total_seconds\": %.1f}\n",
        test.accuracy, test.loss, (long long)net.num_parameters(), epochs,
        train::Progress::now() - t0);
  } catch (const Error& e) {
    std::fprintf(stderr, "fashion_mnist_cnn: %s\n", e.what());
    return 1;
  }
  return 0;
}
