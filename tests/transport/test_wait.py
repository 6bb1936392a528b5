"""Long-poll task requests: a waiting collaborator hears of its task as soon as it exists."""

from __future__ import annotations

import threading

from bastion.protocol import Assignment
from bastion.transport.wait import ASK_AGAIN_SECONDS, RoundNews, TaskWaiter


def test_a_held_wait_answers_with_the_task_once_there_is_one() -> None:
    answers = [Assignment("wait", 1, retry_after=0.5)] * 3 + [Assignment("run", 2)]
    asked: list[str] = []

    def get_tasks(name: str) -> Assignment:
        asked.append(name)
        return answers[min(len(asked) - 1, len(answers) - 1)]

    waiter = TaskWaiter(get_tasks, hold_seconds=60, interval=0.001)
    assert waiter.get_tasks("site-1").action == "run"
    assert len(asked) == 4


def test_news_wakes_a_hold_without_polling_the_port() -> None:
    state = {"action": "wait"}
    asked: list[str] = []

    def get_tasks(name: str) -> Assignment:
        asked.append(name)
        return Assignment(state["action"], 1)  # type: ignore[arg-type]

    news = RoundNews()
    waiter = TaskWaiter(get_tasks, news, hold_seconds=60)
    answers: list[Assignment] = []
    thread = threading.Thread(target=lambda: answers.append(waiter.get_tasks("site-1")))
    thread.start()
    while not asked:
        threading.Event().wait(0.001)
    state["action"] = "run"
    news.announce()
    thread.join(timeout=30)
    assert answers[0].action == "run"
    assert len(asked) == 2  # asked once on arrival, once on the news: no polling


def test_news_announced_between_the_first_answer_and_the_hold_is_not_missed() -> None:
    news = RoundNews()
    calls: list[int] = []

    def get_tasks(name: str) -> Assignment:
        calls.append(1)
        if len(calls) == 1:
            news.announce()  # the round opens right after the port said "wait"
            return Assignment("wait", 1)
        return Assignment("run", 2)

    waiter = TaskWaiter(get_tasks, news, hold_seconds=60)
    assert waiter.get_tasks("site-1").action == "run"


def test_a_hold_that_runs_out_asks_again_at_once() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    waiter = TaskWaiter(
        lambda name: Assignment("wait", 1), hold_seconds=2.0, interval=0.001, clock=clock
    )
    answer = waiter.get_tasks("site-1")
    assert answer.action == "wait" and answer.retry_after == ASK_AGAIN_SECONDS


def test_done_and_run_are_never_held_and_holds_are_bounded() -> None:
    waiter = TaskWaiter(lambda name: Assignment("done"), hold_seconds=60)
    assert waiter.get_tasks("a").action == "done"
    held = TaskWaiter(lambda name: Assignment("wait", 1), hold_seconds=60, max_waiting=1)
    thread = threading.Thread(target=held.get_tasks, args=("a",))
    thread.start()
    while held._slots._value:  # type: ignore[attr-defined]  # the first request holds the only slot
        threading.Event().wait(0.001)
    assert held.get_tasks("b").retry_after == 0.5  # answered at once, as before
    held.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
