"""prepare's worker processes (gptdist/data/workers.py): results in the tasks' order, a bounded read
ahead, a task's exception raised in the main process, a dead worker as one line."""

import itertools
import os
import signal
import threading
import time

import pytest

from gptdist.data import tokenizing, workers
from gptdist.errors import UserError


def slow_for_small(number: int) -> tuple[int, int]:
    """Later tasks finish first: the order of the results is the pool's doing, not the clock's."""
    time.sleep(0.02 * (number % 4 == 0))
    return number, os.getpid()


def fails_at_seven(number: int) -> int:
    if number == 7:
        raise ValueError(f"task {number} is bad")
    return number


def unreadable_at_five(number: int) -> int:
    if number == 5:
        tokenizing.tokenize_document(f"/nonexistent/doc{number}.txt", True, False)
    return number


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def unpicklable_at_two(number: int) -> int:
    if number == 2:
        raise Unpicklable()
    return number


def dies_at_three(number: int) -> int:
    if number == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return number


def test_results_come_in_the_order_of_the_tasks_from_several_processes():
    results = list(workers.ordered_map(slow_for_small, range(40), 3))
    assert [number for number, _ in results] == list(range(40))
    assert len({pid for _, pid in results}) == 3 and os.getpid() not in {pid for _, pid in results}


def test_tasks_are_read_only_a_few_ahead_and_the_workers_end_when_the_results_are_dropped():
    pulled = []
    tasks = (pulled.append(number) or number for number in itertools.count())  # an endless input
    results = workers.ordered_map(slow_for_small, tasks, 2)
    first = list(itertools.islice(results, 5))
    assert [number for number, _ in first] == list(range(5))
    assert len(pulled) <= 5 + workers.IN_FLIGHT * 2
    pids = {pid for _, pid in first}
    results.close()  # the workers are ended and reaped at once
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_a_task_that_raises_raises_in_the_main_process_at_its_turn():
    seen = []
    with pytest.raises(ValueError, match="task 7 is bad"):
        for number in workers.ordered_map(fails_at_seven, range(20), 2):
            seen.append(number)
    assert seen == list(range(7))


def test_a_bug_in_a_worker_shows_where_in_the_worker_it_was():
    with pytest.raises(ValueError) as raised:
        list(workers.ordered_map(fails_at_seven, range(20), 2))
    assert isinstance(raised.value.__cause__, workers.WorkerTraceback)
    assert 'in fails_at_seven\n    raise ValueError(f"task {number} is bad")' in str(raised.value.__cause__)


def test_an_exception_that_cannot_be_sent_arrives_as_its_words():
    with pytest.raises(RuntimeError, match=r"Unpicklable\('holds a lock'\)") as raised:
        list(workers.ordered_map(unpicklable_at_two, range(10), 2))
    assert "raise Unpicklable()" in str(raised.value.__cause__)


def test_a_users_error_in_a_worker_is_the_one_line_it_was():
    with pytest.raises(UserError, match=r"^cannot read the input file /nonexistent/doc5.txt \(No such file"):
        list(workers.ordered_map(unreadable_at_five, range(10), 2))


def test_a_worker_that_dies_is_one_line_saying_the_command_goes_on_when_run_again():
    with pytest.raises(UserError, match=r"ended with exit code -9 .*run the same command again"):
        list(workers.ordered_map(dies_at_three, range(10), 2))
