"""The chat engine's thread governor: fewer llama.cpp threads while other work holds the cores."""

from __future__ import annotations

from services.chat.engines.threads import ThreadGovernor, others_running


def governor(readings: list[int | None], most: int = 2, cores: int = 2, step: float = 0.03) -> tuple[ThreadGovernor, list[int]]:
    it, clock = iter(readings), iter(k * step for k in range(len(readings)))
    g = ThreadGovernor(most, cores, reading=lambda: next(it), window=3, clock=lambda: next(clock))
    return g, [g.pick() for _ in readings]


def test_an_idle_machine_gets_every_thread():
    assert governor([0, 0, 0])[1] == [2, 2, 2]


def test_other_work_on_a_core_leaves_one_thread_and_it_comes_back():
    # STT passes start (1 runnable thread elsewhere), then end; the median of 3 readings decides
    assert governor([0, 1, 1, 1, 0, 0, 0])[1] == [2, 2, 1, 1, 1, 2, 2]


def test_one_busy_instant_does_not_flip_it():
    assert governor([0, 0, 3, 0, 0])[1] == [2, 2, 2, 2, 2]


def test_readings_from_long_ago_do_not_count():
    # decodes 1 s apart (the next turn): each is judged by what runs now
    assert governor([1, 1, 0, 0], step=1.0)[1] == [1, 1, 2, 2]


def test_never_below_one_and_never_above_most():
    assert governor([5, 5, 5])[1] == [1, 1, 1]
    assert governor([0, 0], most=2, cores=8)[1] == [2, 2]
    assert governor([0], most=1)[1] == [1]


def test_an_unknown_machine_keeps_the_configured_threads():
    assert governor([None, None])[1] == [2, 2]


def test_reads_this_machine_without_counting_itself():
    n = others_running()
    assert n is None or n >= 0  # Linux: a count of other runnable threads; elsewhere unknown
