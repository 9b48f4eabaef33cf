"""TREC run files: write / read round trip, whitespace in KILT ids, and bad files."""

import pytest

from multiret_jax import trec


def test_round_trip_skips_empty_slots_and_maps_whitespace(tmp_path):
    path = str(tmp_path / "r.trec")
    n = trec.write_trec(path, ["q1", "947testa CRICKET:0"], [["a_0", "", "b_1"], ["c_2", "a_0"]],
                        [[3.5, -1e30, 1.25], [0.5, 0.5]], run_name="taco")
    assert n == 4
    lines = open(path).read().splitlines()
    assert lines[0] == "q1 Q0 a_0 1 3.500000 taco"
    assert lines[1] == "q1 Q0 b_1 2 1.250000 taco"  # the empty slot is left out
    assert lines[2].startswith("947testa_CRICKET:0 Q0 c_2 1 ")
    run = trec.read_trec(path)
    assert run == {"q1": [("a_0", 1, 3.5), ("b_1", 2, 1.25)],
                   "947testa_CRICKET:0": [("c_2", 1, 0.5), ("a_0", 2, 0.5)]}


@pytest.mark.parametrize("text,match", [
    ("q Q0 a 1 1.0\n", "expected 'qid Q0"),
    ("q Q0 a 2 1.0 r\n", "rank 2 for 'q', expected 1"),
    ("q Q0 a 1 1.0 r\nq Q0 b 2 2.0 r\n", "above the previous"),
    ("q Q0 a 1 1.0 r\nq Q0 a 2 1.0 r\n", "twice"),
    ("q Q0 a one 1.0 r\n", "not numbers"),
])
def test_bad_files_name_the_line(tmp_path, text, match):
    path = tmp_path / "bad.trec"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        trec.read_trec(str(path))
    assert f"{path}:" in str(e.value)


def test_write_errors(tmp_path):
    path = str(tmp_path / "r.trec")
    with pytest.raises(ValueError, match="occurs twice"):
        trec.write_trec(path, ["a b", "a_b"], [["x"], ["y"]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="passage id 'x y'"):
        trec.write_trec(path, ["q"], [["x y"]], [[1.0]])
    with pytest.raises(ValueError, match="2 query ids, 1 rankings"):
        trec.write_trec(path, ["q", "r"], [["x"]], [[1.0]])
