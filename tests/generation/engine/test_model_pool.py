"""Which models stay loaded under a memory budget: least recently used out first, the model in use
always kept, and a model seen before makes room before it loads again."""

from __future__ import annotations

from generation.engine.model_pool import ModelPool

SIZES = {"a": 4, "b": 4, "c": 6}


def pool(budget: int, loads: list[str]) -> ModelPool[str]:
    def load(name: str) -> str:
        loads.append(name)
        return name

    return ModelPool(budget, load, lambda name: SIZES[name], lambda: None)


def test_the_least_recently_used_model_is_unloaded_when_another_needs_room() -> None:
    loads: list[str] = []
    models = pool(10, loads)
    assert models.get("a") == ("a", []) and models.get("b") == ("b", [])
    models.get("a")  # a is now the most recently used
    assert models.get("c") == ("c", ["b"])  # 4 + 4 + 6 > 10: b, the least recently used, goes
    assert models.resident == ["a", "c"]
    # b's size is known now: room is made before it loads, so a and c never sit beside it over budget.
    assert models.get("b") == ("b", ["a"])
    assert loads == ["a", "b", "c", "b"]


def test_a_model_over_the_budget_alone_still_loads_and_stays_while_in_use() -> None:
    models = pool(1, [])
    assert models.get("a") == ("a", [])
    assert models.get("b") == ("b", ["a"]) and models.resident == ["b"]
    assert models.get("b") == ("b", [])  # in use: not reloaded
