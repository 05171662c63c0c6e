// Uses an installed tnas the way the README shows: a space as a type, a supernet generated
// from it, a (tiny) DARTS search, the genotype, and retraining of the found cell. Synthetic
// data keeps it fast; tnas-search does the same on Fashion-MNIST.
#include <tnas/tnas.hpp>

#include <cstdio>

using namespace tnas;

// A search space is a type: an operator set and a topology.
using Ops = space::op_set<op::none, op::max_pool<3>, op::skip, op::sep_conv<3>, op::dil_conv<3, 2>>;
using Space = space::darts_cell<Ops, /*nodes=*/4, /*kept inputs=*/2>;
static_assert(Space::edges == 14 && Ops::size == 5);

// Two classes told apart by the sign of the image mean.
data::Dataset synthetic(int64_t n, uint64_t seed) {
  Rng rng(seed);
  data::Dataset d;
  d.images = Tensor::randn({n, 1, 8, 8}, rng);
  d.num_classes = 2;
  const float* p = d.images.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < 64; ++j) s += p[i * 64 + j];
    d.labels.push_back(s > 0);
  }
  return d;
}

int main() {
  try {
    auto train_half = synthetic(64, 1), valid_half = synthetic(64, 2), test = synthetic(64, 3);
    search::Supernet<Space> net({.in_channels = 1, .channels = 4, .cells = 3, .classes = 2});
    search::Darts darts(net, {.second_order = true, .epochs = 1, .batch = 16, .verbose = false});
    auto found = darts.run(train_half, valid_half);
    std::printf("consumer: found %s\n", found.genotype.str().c_str());

    train::DartsNetwork model(found.genotype, {.in_channels = 1,
                                               .channels = 4,
                                               .cells = 3,
                                               .classes = 2,
                                               .drop_path_prob = 0,
                                               .image_size = 8});
    auto fitted =
        train::fit(model, train_half, test, {.epochs = 1, .batch_size = 16, .verbose = false});
    std::printf("consumer: retrained, test accuracy %.3f\n", fitted.eval_acc);
    return fitted.epochs_done == 1 ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
