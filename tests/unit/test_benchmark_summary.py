"""Repeated benchmark runs fold into one row: medians of measurements, sums of counts."""
from benchmarks.loadgen import median_of_runs
from benchmarks.report import spread


def _run(tok_s: float, p99_ttft: float, completed: int, failed: int = 0,
         long_prompt_tokens: int = 1480) -> dict:
    return {"output_throughput": tok_s, "p99_ttft_ms": p99_ttft, "completed": completed, "failed": failed,
            "errors": ["HTTP 500"] if failed else [], "output_token_sources": ["usage"],
            "long_prompt_tokens": long_prompt_tokens}


def test_measurements_take_the_median_each_on_its_own():
    combined = median_of_runs([_run(120.0, 900.0, 32), _run(131.0, 700.0, 32), _run(125.0, 1200.0, 32)])
    assert combined["output_throughput"] == 125.0
    assert combined["p99_ttft_ms"] == 900.0
    assert combined["runs_output_throughput"] == [120.0, 131.0, 125.0]
    assert combined["num_runs"] == 3


def test_other_whole_numbers_take_the_median_and_stay_whole():
    runs = [_run(1.0, 1.0, 9, long_prompt_tokens=n) for n in (1480, 1495, 1490)]
    assert median_of_runs(runs)["long_prompt_tokens"] == 1490


def test_counts_add_up_so_a_failure_in_any_run_shows():
    combined = median_of_runs([_run(120.0, 1.0, 32), _run(121.0, 1.0, 31, failed=1), _run(122.0, 1.0, 32)])
    assert combined["completed"] == 95
    assert combined["failed"] == 1
    assert combined["errors"] == ["HTTP 500"]


def testspread_shows_the_range_of_runs_or_a_dash_for_one_run():
    assert spread({"output_throughput": 125.0, "runs_output_throughput": [120.4, 131.0, 125.0]}) == "120-131"
    assert spread({"output_throughput": 125.0}) == "-"
