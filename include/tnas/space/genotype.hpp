// Genotypes: discrete architectures as values, in the notation of their papers.
//
//   DartsGenotype  prints and parses DARTS' `Genotype(normal=[('sep_conv_3x3', 0), ...],
//                  normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])`
//                  (genotypes.py), so genotypes travel between tnas and the PyTorch code bases.
//   Nb201Genotype  prints and parses NAS-Bench-201's `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`, the
//                  key of its benchmark tables.
//
// Both convert to and from JSON (nlohmann), draw as Graphviz DOT, and count their
// parameter-free ops (skip_connect, pools, none): a normal cell filling up with skip
// connections is the symptom of DARTS' collapse.
//
// Parsing checks syntax (and, for NB201, the fixed edge structure the text encodes); validate()
// checks a genotype against a space: known op names, input indices in range, Keep distinct
// inputs per node. parse_genotype<Space>(text) does both. Every failure is a tnas::Error that
// says what is wrong and where (cell, node, entry, or the character position in the text).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tnas/core/error.hpp"
#include "tnas/space/cell.hpp"

namespace tnas::space {

enum class CellType { normal, reduce };
inline const char* to_string(CellType c) {
  return c == CellType::normal ? "normal" : "reduce";
}

namespace detail {

// Whether an op name counts as parameter-free, from the operator registry.
inline bool parameter_free(const std::string& op, const char* where) {
  const op::OpInfo* info = op::find(op);
  TNAS_CHECK(info, where, ": unknown op '", op, "', cannot tell whether it has parameters; ",
             "registered ops: ", [] {
               std::string s;
               for (auto& e : op::registry) (s += s.empty() ? "" : ", ") += e.name;
               return s;
             }());
  return !info->parametric;
}

// A reading position in a genotype string; errors name the 1-based character and show the text
// from there.
class Cursor {
 public:
  Cursor(std::string_view text, const char* what) : text_(text), what_(what) {}

  std::size_t pos() const { return pos_; }
  bool at_end() {
    skip_ws();
    return pos_ >= text_.size();
  }
  void skip_ws() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  // The next character (after white space), or '\0' at the end.
  char peek() {
    skip_ws();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool accept(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c, std::string_view context) {
    if (!accept(c)) fail(std::string("expected '") + c + "' " + std::string(context));
  }
  bool accept_word(std::string_view w) {
    skip_ws();
    if (text_.substr(pos_, w.size()) != w) return false;
    const std::size_t end = pos_ + w.size();
    if (end < text_.size() &&
        (std::isalnum(static_cast<unsigned char>(text_[end])) || text_[end] == '_'))
      return false;
    pos_ = end;
    return true;
  }
  // [A-Za-z_][A-Za-z0-9_]*
  std::string identifier(std::string_view context) {
    skip_ws();
    const std::size_t start = pos_;
    while (pos_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_'))
      ++pos_;
    if (pos_ == start) fail("expected " + std::string(context));
    return std::string(text_.substr(start, pos_ - start));
  }
  // A Python string literal in single or double quotes (no escapes: op names have none).
  std::string quoted(std::string_view context) {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted " + std::string(context));
    const std::size_t start = ++pos_;
    while (pos_ < text_.size() && text_[pos_] != q) ++pos_;
    if (pos_ >= text_.size()) {
      pos_ = start - 1;
      fail(std::string("unterminated string (no closing ") + q + ")");
    }
    return std::string(text_.substr(start, pos_++ - start));
  }
  // An optionally signed decimal integer of at most 9 digits.
  int integer(std::string_view context) {
    skip_ws();
    const std::size_t start = pos_;
    bool neg = false;
    if (pos_ < text_.size() && (text_[pos_] == '-' || text_[pos_] == '+'))
      neg = text_[pos_++] == '-';
    const std::size_t digits = pos_;
    long v = 0;
    while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_])) &&
           pos_ - digits < 9)
      v = v * 10 + (text_[pos_++] - '0');
    if (pos_ == digits) {
      pos_ = start;
      fail("expected " + std::string(context) + " (an integer)");
    }
    if (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      pos_ = start;
      fail(std::string(context) + " has too many digits");
    }
    return int(neg ? -v : v);
  }

  [[noreturn]] void fail(const std::string& msg) const { fail_at(pos_, msg); }
  [[noreturn]] void fail_at(std::size_t at, const std::string& msg) const {
    std::string near = at < text_.size() ? std::string(text_.substr(at, 24)) : "";
    if (at + 24 < text_.size()) near += "...";
    TNAS_FAIL(what_, ": ", msg, " at character ", at + 1,
              at < text_.size() ? " (at \"" + near + "\")" : std::string(" (the end of the text)"),
              " in \"", text_, "\"");
  }

 private:
  std::string_view text_;
  const char* what_;
  std::size_t pos_ = 0;
};

inline std::string dot_quote(std::string_view s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    r += c;
  }
  return r + "\"";
}

inline std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

// The JSON value at `key` of object `j`, or a tnas::Error naming the key.
inline const nlohmann::json& member(const nlohmann::json& j, const char* key, const char* what) {
  TNAS_CHECK(j.is_object(), what, " JSON must be an object, got ", j.type_name(), ": ", j.dump());
  auto it = j.find(key);
  TNAS_CHECK(it != j.end(), what, " JSON lacks the key \"", key, "\": ", j.dump());
  return *it;
}

}  // namespace detail

// ---- Graphviz ----------------------------------------------------------------------------------

// Writes `dot` (Graphviz source) to `path`; a tnas::Error when the file cannot be written.
inline void write_dot(const std::filesystem::path& path, const std::string& dot) {
  std::ofstream f(path);
  TNAS_CHECK(f.good(), "write_dot: cannot open '", path.string(), "' for writing");
  f << dot;
  f.close();
  TNAS_CHECK(!f.fail(), "write_dot: writing '", path.string(), "' failed");
}

// Whether Graphviz's `dot` is an executable file in one of PATH's folders.
inline bool dot_on_path() {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::string_view rest = path;
  while (true) {
    const std::size_t colon = rest.find(':');
    std::filesystem::path dir(std::string(rest.substr(0, colon)));
    if (dir.empty()) dir = ".";
    std::error_code ec;
    auto st = std::filesystem::status(dir / "dot", ec);
    if (!ec && std::filesystem::is_regular_file(st) &&
        (st.permissions() & std::filesystem::perms::owner_exec) != std::filesystem::perms::none)
      return true;
    if (colon == std::string_view::npos) return false;
    rest.remove_prefix(colon + 1);
  }
}

// Runs `dot -Tpng` on dot_path, writing the PNG beside it (same name, extension .png). Returns
// false, doing nothing, when `dot` is not on PATH (rendering is a convenience: the .dot file is
// the artefact), and false when dot fails.
inline bool render_png(const std::filesystem::path& dot_path) {
  if (!dot_on_path()) return false;
  std::filesystem::path png = dot_path;
  png.replace_extension(".png");
  const std::string cmd = "dot -Tpng " + detail::shell_quote(dot_path.string()) + " -o " +
                          detail::shell_quote(png.string()) + " 2>/dev/null";
  return std::system(cmd.c_str()) == 0 && std::filesystem::exists(png);
}

// ---- DARTS -------------------------------------------------------------------------------------

// represents: a derived DARTS architecture: for each cell type, (op, input state) per kept edge,
//   node by node (entries 2i, 2i+1 feed node i when Keep = 2), and the states concatenated into
//   the cell output.
// requires: nothing to construct; validate() checks it against a space.
// ensures: parse(str()) == *this; str(parse(s)) == s for text in the canonical form str()
//   writes.
struct DartsGenotype {
  using Entry = std::pair<std::string, int>;
  std::vector<Entry> normal, reduce;
  std::vector<int> normal_concat, reduce_concat;

  friend bool operator==(const DartsGenotype&, const DartsGenotype&) = default;

  const std::vector<Entry>& cell(CellType c) const {
    return c == CellType::normal ? normal : reduce;
  }
  const std::vector<int>& concat(CellType c) const {
    return c == CellType::normal ? normal_concat : reduce_concat;
  }

  // DARTS' notation, as Python prints its Genotype namedtuple.
  std::string str() const {
    auto entries = [](const std::vector<Entry>& v) {
      std::string s = "[";
      for (std::size_t i = 0; i < v.size(); ++i)
        s += (i ? ", ('" : "('") + v[i].first + "', " + std::to_string(v[i].second) + ")";
      return s + "]";
    };
    auto ints = [](const std::vector<int>& v) {
      std::string s = "[";
      for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
      return s + "]";
    };
    return "Genotype(normal=" + entries(normal) + ", normal_concat=" + ints(normal_concat) +
           ", reduce=" + entries(reduce) + ", reduce_concat=" + ints(reduce_concat) + ")";
  }
  friend std::ostream& operator<<(std::ostream& os, const DartsGenotype& g) {
    return os << g.str();
  }

  // Reads DARTS' notation: the four fields in any order, each once; strings in ' or "; lists
  // may end with a comma; a concat may be written `range(a, b)` as genotypes.py does. Checks
  // syntax only; see validate().
  static DartsGenotype parse(std::string_view text) {
    detail::Cursor c(text, "DARTS genotype");
    DartsGenotype g;
    bool seen[4] = {false, false, false, false};
    if (c.accept_word("Genotype")) {
      c.expect('(', "after 'Genotype'");
    } else {
      c.expect('(', "at the start (DARTS' notation is Genotype(normal=[...], ...))");
    }
    while (!c.accept(')')) {
      c.skip_ws();
      const std::size_t at = c.pos();
      const std::string field =
          c.identifier("a field name (normal, normal_concat, reduce, reduce_concat)");
      int f = field == "normal"          ? 0
              : field == "normal_concat" ? 1
              : field == "reduce"        ? 2
              : field == "reduce_concat" ? 3
                                         : -1;
      if (f < 0)
        c.fail_at(at, "unknown field '" + field +
                          "' (a Genotype has normal, normal_concat, reduce, reduce_concat)");
      if (seen[f]) c.fail_at(at, "field '" + field + "' appears twice");
      seen[f] = true;
      c.expect('=', "after '" + field + "'");
      if (f == 0 || f == 2)
        (f == 0 ? g.normal : g.reduce) = parse_entries(c, field);
      else
        (f == 1 ? g.normal_concat : g.reduce_concat) = parse_concat(c, field);
      if (!c.accept(',')) {
        c.expect(')', "or ',' after the value of '" + field + "'");
        break;
      }
    }
    if (!c.at_end()) c.fail("unexpected text after the closing ')'");
    const char* names[4] = {"normal", "normal_concat", "reduce", "reduce_concat"};
    for (int f = 0; f < 4; ++f)
      if (!seen[f]) c.fail(std::string("the field '") + names[f] + "' is missing");
    return g;
  }

  // Checks the genotype against a space: `ops` the op names of the space, `nodes` intermediate
  // nodes per cell, `keep` distinct inputs per node, none never used, inputs of node i among
  // states 0 .. i + 1, concat a set of intermediate states.
  void validate(std::span<const std::string_view> ops, int nodes = 4, int keep = 2) const {
    TNAS_CHECK(nodes >= 1 && keep >= 1, "DartsGenotype::validate: need nodes >= 1 and keep >= 1, ",
               "got nodes = ", nodes, ", keep = ", keep);
    for (CellType ct : {CellType::normal, CellType::reduce}) {
      const std::vector<Entry>& v = cell(ct);
      const char* cn = to_string(ct);
      TNAS_CHECK(int(v.size()) == nodes * keep, "DARTS genotype: the ", cn, " cell has ", v.size(),
                 " entries, expected ", nodes * keep, " (", nodes, " nodes x ", keep,
                 " inputs kept per node)");
      for (int e = 0; e < int(v.size()); ++e) {
        const int node = e / keep;
        const auto& [opname, from] = v[e];
        TNAS_CHECK(std::find(ops.begin(), ops.end(), opname) != ops.end(),
                   "DARTS genotype: unknown op '", opname, "' in ", cn, " cell, node ", node,
                   " (entry ", e, "); known ops: ", detail::join(ops));
        TNAS_CHECK(opname != op::none::name, "DARTS genotype: op 'none' in ", cn, " cell, node ",
                   node, " (entry ", e, "): a derived genotype keeps only real edges");
        TNAS_CHECK(from >= 0 && from < node + 2, "DARTS genotype: input ", from, " of ", cn,
                   " cell, node ", node, " (entry ", e, ") is out of range: node ", node,
                   " reads from states 0..", node + 1,
                   " (the two cell inputs and the nodes before it)");
        for (int o = node * keep; o < e; ++o)
          TNAS_CHECK(v[o].second != from, "DARTS genotype: ", cn, " cell, node ", node,
                     " takes input ", from, " twice (entries ", o, " and ", e,
                     "); each node keeps ", keep, " distinct inputs");
      }
      const std::vector<int>& cc = concat(ct);
      TNAS_CHECK(!cc.empty(), "DARTS genotype: ", cn, "_concat is empty");
      for (std::size_t k = 0; k < cc.size(); ++k) {
        TNAS_CHECK(cc[k] >= 2 && cc[k] < nodes + 2, "DARTS genotype: ", cn, "_concat holds ", cc[k],
                   ", but the intermediate nodes are states 2..", nodes + 1);
        for (std::size_t o = 0; o < k; ++o)
          TNAS_CHECK(cc[o] != cc[k], "DARTS genotype: ", cn, "_concat lists state ", cc[k],
                     " twice");
      }
    }
  }
  template <DartsSpace S>
  void validate() const {
    validate(S::ops::names, S::nodes, S::keep);
  }

  // Ops without weights (skip_connect, pools, none) in one cell, or in both.
  int parameter_free_ops(CellType c) const {
    int n = 0;
    for (auto& e : cell(c)) n += detail::parameter_free(e.first, "DARTS genotype");
    return n;
  }
  int parameter_free_ops() const {
    return parameter_free_ops(CellType::normal) + parameter_free_ops(CellType::reduce);
  }
  // How many entries of cell `c` use `op` (e.g. skip_connect in the normal cell).
  int count(std::string_view op, CellType c = CellType::normal) const {
    return int(std::count_if(cell(c).begin(), cell(c).end(),
                             [&](const Entry& e) { return e.first == op; }));
  }

  // Graphviz source of one cell, drawn as DARTS' visualize.py draws it: inputs c_{k-2},
  // c_{k-1}, intermediate nodes 0.., output c_{k} fed by the concat states, edges labelled by
  // op. `keep` is the number of entries per node (2 in DARTS).
  std::string dot(CellType which = CellType::normal, int keep = 2) const {
    TNAS_CHECK(keep >= 1, "DartsGenotype::dot: keep must be >= 1, got ", keep);
    const std::vector<Entry>& v = cell(which);
    auto state = [](int s) {
      if (s == 0) return std::string("\"c_{k-2}\"");
      if (s == 1) return std::string("\"c_{k-1}\"");
      std::string q(1, '"');  // appended, not "\"" + ..., which trips GCC 12's -Wrestrict
      q += std::to_string(s - 2);
      q += '"';
      return q;
    };
    std::string s = "digraph " + std::string(to_string(which)) + " {\n";
    s += "  edge [fontname=times fontsize=20]\n";
    s += "  node [align=center fontname=times fontsize=20 height=0.5 penwidth=2 shape=rect "
         "style=filled width=0.5]\n";
    s += "  rankdir=LR\n";
    s += "  \"c_{k-2}\" [fillcolor=darkseagreen2]\n";
    s += "  \"c_{k-1}\" [fillcolor=darkseagreen2]\n";
    const int nodes = (int(v.size()) + keep - 1) / keep;
    for (int i = 0; i < nodes; ++i) s += "  " + state(i + 2) + " [fillcolor=lightblue]\n";
    for (std::size_t e = 0; e < v.size(); ++e)
      s += "  " + state(v[e].second) + " -> " + state(int(e) / keep + 2) +
           " [label=" + detail::dot_quote(v[e].first) + " fillcolor=gray]\n";
    s += "  \"c_{k}\" [fillcolor=palegoldenrod]\n";
    for (int st : concat(which)) s += "  " + state(st) + " -> \"c_{k}\" [fillcolor=gray]\n";
    return s + "}\n";
  }
  void write_dot(const std::filesystem::path& path, CellType which = CellType::normal,
                 int keep = 2) const {
    space::write_dot(path, dot(which, keep));
  }

  void save_json(const std::filesystem::path& path) const;
  static DartsGenotype load_json(const std::filesystem::path& path);

 private:
  static std::vector<Entry> parse_entries(detail::Cursor& c, const std::string& field) {
    std::vector<Entry> v;
    c.expect('[', "to open the list of '" + field + "'");
    while (!c.accept(']')) {
      c.expect('(', "to open an (op, input) pair of '" + field + "', or ']'");
      std::string op = c.quoted("op name");
      c.expect(',', "after the op name");
      int from = c.integer("the input index");
      c.accept(',');
      c.expect(')', "to close the (op, input) pair");
      v.emplace_back(std::move(op), from);
      if (!c.accept(',')) {
        c.expect(']', "or ',' after an (op, input) pair of '" + field + "'");
        break;
      }
    }
    return v;
  }
  static std::vector<int> parse_concat(detail::Cursor& c, const std::string& field) {
    std::vector<int> v;
    if (c.accept_word("range")) {
      c.expect('(', "after 'range'");
      c.skip_ws();
      const std::size_t at = c.pos();
      int lo = c.integer("the start of the range"), hi;
      if (c.accept(',')) {
        hi = c.integer("the end of the range");
      } else {
        hi = lo;
        lo = 0;
      }
      c.expect(')', "to close 'range('");
      if (hi - lo > 1000)
        c.fail_at(at, "range(" + std::to_string(lo) + ", " + std::to_string(hi) +
                          ") is too long for a concat");
      for (int i = lo; i < hi; ++i) v.push_back(i);
      return v;
    }
    c.expect('[', "or 'range(' to start '" + field + "'");
    while (!c.accept(']')) {
      v.push_back(c.integer("a state index"));
      if (!c.accept(',')) {
        c.expect(']', "or ',' in '" + field + "'");
        break;
      }
    }
    return v;
  }
};

// ---- NAS-Bench-201 -----------------------------------------------------------------------------

// represents: a NAS-Bench-201 cell: one op per edge, in the order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1,
//   3<-2 (Nb201::edge_table).
// ensures: parse(str()) == *this; str(parse(s)) == s for every well-formed string.
struct Nb201Genotype {
  static constexpr int nodes = 4;
  static constexpr int edges = 6;
  std::array<std::string, edges> ops;

  friend bool operator==(const Nb201Genotype&, const Nb201Genotype&) = default;

  // "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|...|"
  std::string str() const {
    std::string s;
    int e = 0;
    for (int i = 1; i < nodes; ++i) {
      s += i > 1 ? "+|" : "|";
      for (int j = 0; j < i; ++j) s += ops[e++] + "~" + std::to_string(j) + "|";
    }
    return s;
  }
  friend std::ostream& operator<<(std::ostream& os, const Nb201Genotype& g) {
    return os << g.str();
  }

  // Reads an NB201 arch string (white space around it is ignored, none inside). Checks the
  // structure: 3 node groups joined by '+', node i with i edges, listed by source 0 .. i-1.
  // Op names are checked by validate().
  static Nb201Genotype parse(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
      text.remove_prefix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
      text.remove_suffix(1);
    detail::Cursor c(text, "NB201 arch string");
    Nb201Genotype g;
    int e = 0, node = 0;
    auto no_ws = [&] {
      if (c.pos() < text.size() && std::isspace(static_cast<unsigned char>(text[c.pos()])))
        c.fail("white space inside the arch string");
    };
    while (true) {
      ++node;
      const std::size_t group_at = c.pos();
      if (node >= nodes)
        c.fail_at(group_at - 1, "more than " + std::to_string(nodes - 1) +
                                    " node groups ('+' separates the groups of nodes 1.." +
                                    std::to_string(nodes - 1) + " of a " + std::to_string(nodes) +
                                    "-node cell)");
      no_ws();
      c.expect('|', "to open the edges of node " + std::to_string(node));
      int k = 0;
      while (true) {
        no_ws();
        const std::size_t at = c.pos();
        if (c.peek() == '+' || c.peek() == '\0') break;
        if (k == node)
          c.fail_at(at, "node " + std::to_string(node) + " has more than " + std::to_string(node) +
                            " edge" + (node == 1 ? "" : "s") +
                            " (one from each earlier node); expected '+' or the end");
        std::string op = c.identifier("an op name");
        no_ws();
        c.expect('~', "after the op name '" + op + "' (edges are written op~source)");
        no_ws();
        const std::size_t src_at = c.pos();
        const int from = c.integer("the source node of '" + op + "'");
        if (from != k)
          c.fail_at(src_at, "the edge '" + op + "~" + std::to_string(from) + "' of node " +
                                std::to_string(node) + " reads from node " + std::to_string(from) +
                                ", expected " + std::to_string(k) + " (node " +
                                std::to_string(node) + "'s edges come from nodes 0.." +
                                std::to_string(node - 1) + ", in that order)");
        no_ws();
        c.expect('|', "after the edge '" + op + "~" + std::to_string(from) + "'");
        g.ops[e++] = std::move(op);
        ++k;
      }
      if (k != node)
        c.fail_at(group_at, "node " + std::to_string(node) + " has " + std::to_string(k) + " edge" +
                                (k == 1 ? "" : "s") + ", expected " + std::to_string(node) +
                                " (one from each earlier node)");
      if (c.at_end()) break;
      c.expect('+', "between node groups");
    }
    if (node != nodes - 1)
      c.fail("the string has " + std::to_string(node) + " node group" + (node == 1 ? "" : "s") +
             ", expected " + std::to_string(nodes - 1) + " (nodes 1.." + std::to_string(nodes - 1) +
             " of a " + std::to_string(nodes) + "-node cell)");
    return g;
  }

  // Checks every op against `ops`, the op names of the space.
  void validate(std::span<const std::string_view> known) const {
    for (int e = 0; e < edges; ++e)
      TNAS_CHECK(std::find(known.begin(), known.end(), ops[e]) != known.end(),
                 "NB201 genotype: unknown op '", ops[e], "' on edge ", Nb201::edge_table[e].to,
                 "<-", Nb201::edge_table[e].from, " (entry ", e,
                 "); known ops: ", detail::join(known));
  }
  template <Nb201Space S>
  void validate() const {
    static_assert(S::nodes == nodes,
                  "Nb201Genotype holds the 6 edges of a 4-node cell; this space has another "
                  "number of nodes.");
    validate(S::ops::names);
  }

  // The ops as indices into OpSet (the columns of a supernet's alphas), and back.
  template <class OpSet>
  std::array<int, edges> op_indices() const {
    validate(OpSet::names);
    std::array<int, edges> r{};
    for (int e = 0; e < edges; ++e) r[e] = OpSet::index_of(ops[e]);
    return r;
  }
  template <class OpSet>
  static Nb201Genotype from_op_indices(const std::array<int, edges>& idx) {
    Nb201Genotype g;
    for (int e = 0; e < edges; ++e) g.ops[e] = std::string(OpSet::name(idx[e]));
    return g;
  }

  int parameter_free_ops() const {
    int n = 0;
    for (auto& op : ops) n += detail::parameter_free(op, "NB201 genotype");
    return n;
  }

  // Graphviz source: nodes 0..3, one edge per op; `none` edges are drawn dotted and grey so the
  // six-edge structure stays visible while reading as "no connection".
  std::string dot() const {
    std::string s = "digraph nb201 {\n";
    s += "  edge [fontname=times fontsize=20]\n";
    s += "  node [align=center fontname=times fontsize=20 height=0.5 penwidth=2 shape=rect "
         "style=filled width=0.5]\n";
    s += "  rankdir=LR\n";
    s += "  \"0\" [fillcolor=darkseagreen2]\n";
    for (int i = 1; i < nodes - 1; ++i)
      s += "  \"" + std::to_string(i) + "\" [fillcolor=lightblue]\n";
    s += "  \"" + std::to_string(nodes - 1) + "\" [fillcolor=palegoldenrod]\n";
    for (int e = 0; e < edges; ++e) {
      const Edge ed = Nb201::edge_table[e];
      s += "  \"" + std::to_string(ed.from) + "\" -> \"" + std::to_string(ed.to) +
           "\" [label=" + detail::dot_quote(ops[e]) +
           (ops[e] == op::none::name ? " style=dotted color=gray" : " fillcolor=gray") + "]\n";
    }
    return s + "}\n";
  }
  void write_dot(const std::filesystem::path& path) const { space::write_dot(path, dot()); }

  void save_json(const std::filesystem::path& path) const;
  static Nb201Genotype load_json(const std::filesystem::path& path);
};

static_assert(Nb201::edges == Nb201Genotype::edges && Nb201::nodes == Nb201Genotype::nodes,
              "Nb201Genotype's fixed edge list must match the Nb201 space.");

// Parses `text` in the notation of Space's genotype and validates it against Space.
template <class Space>
typename Space::genotype parse_genotype(std::string_view text) {
  auto g = Space::genotype::parse(text);
  g.template validate<Space>();
  return g;
}

// ---- JSON --------------------------------------------------------------------------------------

// {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...],
//  "reduce_concat": [...], "darts": "Genotype(...)"}. Reading takes the arrays, or the "darts"
// string alone; when both are there they must agree.
inline void to_json(nlohmann::json& j, const DartsGenotype& g) {
  auto entries = [](const std::vector<DartsGenotype::Entry>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (auto& [op, from] : v) a.push_back(nlohmann::json::array({op, from}));
    return a;
  };
  j = nlohmann::json{{"normal", entries(g.normal)},
                     {"normal_concat", g.normal_concat},
                     {"reduce", entries(g.reduce)},
                     {"reduce_concat", g.reduce_concat},
                     {"darts", g.str()}};
}

inline void from_json(const nlohmann::json& j, DartsGenotype& g) {
  constexpr const char* what = "DARTS genotype";
  TNAS_CHECK(j.is_object(), what, " JSON must be an object, got ", j.type_name(), ": ", j.dump());
  const bool has_arrays = j.contains("normal") || j.contains("reduce");
  if (!has_arrays) {
    const nlohmann::json& s = detail::member(j, "darts", what);
    TNAS_CHECK(s.is_string(), what, " JSON: \"darts\" must be a string, got ", s.dump());
    g = DartsGenotype::parse(s.get<std::string>());
    return;
  }
  auto entries = [&](const char* key) {
    const nlohmann::json& a = detail::member(j, key, what);
    TNAS_CHECK(a.is_array(), what, " JSON: \"", key,
               "\" must be an array of [op, input] pairs, got ", a.dump());
    std::vector<DartsGenotype::Entry> v;
    for (std::size_t i = 0; i < a.size(); ++i) {
      const nlohmann::json& p = a[i];
      TNAS_CHECK(p.is_array() && p.size() == 2 && p[0].is_string() && p[1].is_number_integer(),
                 what, " JSON: \"", key, "\"[", i, "] must be [\"op\", input], got ", p.dump());
      v.emplace_back(p[0].get<std::string>(), p[1].get<int>());
    }
    return v;
  };
  auto ints = [&](const char* key) {
    const nlohmann::json& a = detail::member(j, key, what);
    TNAS_CHECK(a.is_array(), what, " JSON: \"", key, "\" must be an array of integers, got ",
               a.dump());
    std::vector<int> v;
    for (std::size_t i = 0; i < a.size(); ++i) {
      TNAS_CHECK(a[i].is_number_integer(), what, " JSON: \"", key, "\"[", i,
                 "] must be an integer, got ", a[i].dump());
      v.push_back(a[i].get<int>());
    }
    return v;
  };
  DartsGenotype r;
  r.normal = entries("normal");
  r.normal_concat = ints("normal_concat");
  r.reduce = entries("reduce");
  r.reduce_concat = ints("reduce_concat");
  if (j.contains("darts")) {
    const nlohmann::json& s = j["darts"];
    TNAS_CHECK(s.is_string(), what, " JSON: \"darts\" must be a string, got ", s.dump());
    TNAS_CHECK(DartsGenotype::parse(s.get<std::string>()) == r, what,
               " JSON: the \"darts\" string and the normal/reduce arrays disagree: \"",
               s.get<std::string>(), "\" vs ", r.str());
  }
  g = std::move(r);
}

// {"arch": "|...|", "ops": ["nor_conv_3x3", ...]}. Reading takes "arch", or "ops" alone; when
// both are there they must agree.
inline void to_json(nlohmann::json& j, const Nb201Genotype& g) {
  j = nlohmann::json{{"arch", g.str()}, {"ops", g.ops}};
}

inline void from_json(const nlohmann::json& j, Nb201Genotype& g) {
  constexpr const char* what = "NB201 genotype";
  TNAS_CHECK(j.is_object(), what, " JSON must be an object, got ", j.type_name(), ": ", j.dump());
  Nb201Genotype r;
  bool have = false;
  if (j.contains("ops")) {
    const nlohmann::json& a = j["ops"];
    TNAS_CHECK(a.is_array() && a.size() == Nb201Genotype::edges, what,
               " JSON: \"ops\" must be an array of ", Nb201Genotype::edges, " op names, got ",
               a.dump());
    for (int e = 0; e < Nb201Genotype::edges; ++e) {
      TNAS_CHECK(a[e].is_string(), what, " JSON: \"ops\"[", e, "] must be a string, got ",
                 a[e].dump());
      r.ops[e] = a[e].get<std::string>();
    }
    have = true;
  }
  if (j.contains("arch") || !have) {
    const nlohmann::json& s = detail::member(j, "arch", what);
    TNAS_CHECK(s.is_string(), what, " JSON: \"arch\" must be a string, got ", s.dump());
    Nb201Genotype p = Nb201Genotype::parse(s.get<std::string>());
    TNAS_CHECK(!have || p == r, what, " JSON: \"arch\" and \"ops\" disagree: \"",
               s.get<std::string>(), "\" vs ", r.str());
    r = std::move(p);
  }
  g = std::move(r);
}

namespace detail {
template <class G>
void save_json(const std::filesystem::path& path, const G& g, const char* what) {
  std::ofstream f(path);
  TNAS_CHECK(f.good(), what, ": cannot open '", path.string(), "' for writing");
  f << nlohmann::json(g).dump(2) << "\n";
  f.close();
  TNAS_CHECK(!f.fail(), what, ": writing '", path.string(), "' failed");
}
template <class G>
G load_json(const std::filesystem::path& path, const char* what) {
  std::ifstream f(path);
  TNAS_CHECK(f.good(), what, ": cannot open '", path.string(), "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    TNAS_FAIL(what, ": '", path.string(), "' is not valid JSON: ", e.what());
  }
  return j.get<G>();
}
}  // namespace detail

inline void DartsGenotype::save_json(const std::filesystem::path& path) const {
  detail::save_json(path, *this, "DartsGenotype::save_json");
}
inline DartsGenotype DartsGenotype::load_json(const std::filesystem::path& path) {
  return detail::load_json<DartsGenotype>(path, "DartsGenotype::load_json");
}
inline void Nb201Genotype::save_json(const std::filesystem::path& path) const {
  detail::save_json(path, *this, "Nb201Genotype::save_json");
}
inline Nb201Genotype Nb201Genotype::load_json(const std::filesystem::path& path) {
  return detail::load_json<Nb201Genotype>(path, "Nb201Genotype::load_json");
}

}  // namespace tnas::space
