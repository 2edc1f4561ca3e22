import json

import pytest

from shared.config import DataFormat
from shared.dataformats import DatasetError, validate_lines


def lines(*rows) -> list[str]:
    return [r if isinstance(r, str) else json.dumps(r) for r in rows]


@pytest.mark.parametrize(("row", "fmt"), [
    ({"text": "hello"}, DataFormat.TEXT),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, DataFormat.CHAT),
    ({"instruction": "add", "input": "1 1", "output": "2"}, DataFormat.INSTRUCTION),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, DataFormat.PREFERENCE),
])
def test_each_format_is_detected(row, fmt):
    summary = validate_lines(lines(row, row, ""))
    assert summary.format is fmt
    assert summary.rows == 2
    assert summary.stats["chars_min"] > 0


def test_errors_name_line_and_problem():
    with pytest.raises(DatasetError) as info:
        validate_lines(lines({"text": "ok"}, "{not json", {"text": ""}, {"instruction": "x", "output": "y"}))
    errors = dict(info.value.errors)
    assert "not valid JSON" in errors[2]
    assert '"text" is empty' in errors[3]
    assert "text" in errors[4]  # a row of another format in a text file
    assert "line 2" in str(info.value)


def test_chat_must_end_with_the_assistant():
    with pytest.raises(DatasetError) as info:
        validate_lines(lines({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}))
    assert "last message" in info.value.errors[0][1]


def test_unknown_shape_and_empty_file():
    with pytest.raises(DatasetError) as info:
        validate_lines(lines({"foo": 1}))
    assert "unknown format" in info.value.errors[0][1]
    with pytest.raises(DatasetError):
        validate_lines(["", "  "])


def test_expected_format_is_enforced():
    with pytest.raises(DatasetError):
        validate_lines(lines({"text": "x"}), DataFormat.PREFERENCE)


def test_the_statistics_hold_a_histogram_of_approximate_token_lengths():
    rows = [{"text": "x" * n} for n in (4, 100, 130, 131, 4000)]  # 1, 25, 33, 33 and 1000 tokens
    histogram = validate_lines(lines(*rows)).stats["token_lengths"]
    assert histogram["edges"] == [0, 32, 64, 128, 256, 512, 1024]  # up to the first edge past the longest row
    assert histogram["counts"] == [2, 2, 0, 0, 0, 1]
    assert (histogram["min"], histogram["max"], histogram["p95"]) == (1, 1000, 1000)
    assert histogram["mean"] == round((1 + 25 + 33 + 33 + 1000) / 5, 1)
    assert histogram["approximation"] == "ceil(characters / 4)"


def test_rows_longer_than_the_last_edge_get_a_bucket_of_their_own():
    chat = {"messages": [{"role": "user", "content": "q" * 40_000}, {"role": "assistant", "content": "a" * 4}]}
    histogram = validate_lines(lines(chat, {"messages": chat["messages"][1:]})).stats["token_lengths"]
    assert histogram["edges"][-2:] == [8192, 10_002] and histogram["counts"][-1] == 1
    assert sum(histogram["counts"]) == 2 and histogram["counts"][0] == 1
