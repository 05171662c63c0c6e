// Saving and loading a module's state dict (parameters and buffers) as a tnas archive.
#pragma once

#include <filesystem>
#include <string>

#include "tnas/io/archive.hpp"
#include "tnas/nn/module.hpp"

namespace tnas::nn {

// Writes m.state_dict() to `path` atomically, with `meta` plus "tnas.kind" = "state_dict" and
// "tnas.module" = m.name(), which load_state reports when a file does not fit a module.
inline void save_state(const Module& m, const std::filesystem::path& path, io::Metadata meta = {}) {
  meta["tnas.kind"] = "state_dict";
  meta["tnas.module"] = m.name();
  io::write(path, m.state_dict(), meta);
}

// Reads `path` and loads it into m (see Module::load_state_dict); every error names the file.
// Returns the file's metadata.
inline io::Metadata load_state(Module& m, const std::filesystem::path& path, bool strict = true) {
  io::Archive a = io::read(path);
  try {
    m.load_state_dict(a.tensors, strict);
  } catch (const Error& e) {
    auto it = a.meta.find("tnas.module");
    TNAS_FAIL("load_state: '", path.string(), "'",
              it != a.meta.end() ? " (saved from " + it->second + ")" : std::string(),
              " does not fit: ", e.what());
  }
  return a.meta;
}

}  // namespace tnas::nn
