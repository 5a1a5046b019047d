"""Mini "fix the bug" tasks in the style of SWE-bench, with a candidate patch each.

A task is a small Python repository at a buggy commit (`files`), the issue it comes with
(`statement`), the tests that decide it (`tests/test_*.py`, stdlib `unittest`: the default template
has no pytest, and a reward must not depend on what a template happens to ship), and a candidate
patch (`patch`: the files a policy rewrote). The reward is the share of the tests that pass once
the patch is applied, so it is what an RL loop would feed back to the policy.

The patches are fixed here rather than produced by a model, and deliberately of mixed quality
(right, half right, wrong, not even valid Python), so rewards differ from task to task and each
has a known `expected_reward` the example and its test check.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from textwrap import dedent


@dataclass(frozen=True)
class Task:
    name: str
    statement: str
    files: dict[str, str]          # the repository at the buggy commit: path (relative) -> text
    patch: dict[str, str] = field(default_factory=dict)  # the candidate's rewritten files
    expected_reward: float = 1.0   # passed / total once the patch is applied


def _src(text: str) -> str:
    return dedent(text).lstrip("\n")


def _tests(module: str, body: str) -> str:
    return _src(f"""
        import unittest

        from {module} import *  # noqa: F403


        """) + _src(body) + "\n\nif __name__ == \"__main__\":\n    unittest.main()\n"


# ---- 1. merge intervals: the patch fixes the bug (4/4) ----------------------------------------

_MERGE_BUGGY = _src('''
    def merge(intervals):
        """Merge overlapping closed intervals [(start, end), ...]; the result is sorted."""
        out = []
        for start, end in intervals:
            if out and start < out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        return out
    ''')

_MERGE_FIXED = _src('''
    def merge(intervals):
        """Merge overlapping closed intervals [(start, end), ...]; the result is sorted."""
        out = []
        for start, end in sorted(intervals):
            # Closed intervals that touch ([1, 2] and [2, 3]) overlap too.
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        return out
    ''')

MERGE = Task(
    name="merge-intervals",
    statement="merge() leaves touching intervals apart and gets unsorted input wrong.",
    files={"intervals.py": _MERGE_BUGGY, "tests/__init__.py": "", "tests/test_intervals.py": _tests("intervals", '''
        class MergeTest(unittest.TestCase):
            def test_overlapping(self):
                self.assertEqual(merge([(1, 3), (2, 6), (8, 10)]), [(1, 6), (8, 10)])

            def test_touching(self):
                self.assertEqual(merge([(1, 2), (2, 3)]), [(1, 3)])

            def test_unsorted(self):
                self.assertEqual(merge([(8, 10), (1, 3), (2, 4)]), [(1, 4), (8, 10)])

            def test_empty(self):
                self.assertEqual(merge([]), [])
        ''')},
    patch={"intervals.py": _MERGE_FIXED},
    expected_reward=1.0,
)


# ---- 2. binary search: the patch fixes one bound of two (3/4) ---------------------------------

_SEARCH_BUGGY = _src('''
    def find(items, target):
        """Index of target in the sorted list items, or -1."""
        lo, hi = 0, len(items) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid] < target:
                lo = mid
            else:
                hi = mid
        return lo if items and items[lo] == target else -1
    ''')

_SEARCH_HALF = _src('''
    def find(items, target):
        """Index of target in the sorted list items, or -1."""
        lo, hi = 0, len(items) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid] == target:
                return mid
            if items[mid] < target:
                lo = mid + 1
            else:
                hi = mid - 1
        # Still wrong: the loop ends when lo == hi without looking at items[lo], so a target
        # found only there (here the last element) is reported missing.
        return -1
    ''')

SEARCH = Task(
    name="binary-search",
    statement="find() never returns for some targets (lo = mid loops forever).",
    files={"search.py": _SEARCH_BUGGY, "tests/__init__.py": "", "tests/test_search.py": _tests("search", '''
        class FindTest(unittest.TestCase):
            def test_middle(self):
                self.assertEqual(find([1, 3, 5, 7, 9], 5), 2)

            def test_last(self):
                self.assertEqual(find([1, 3, 5, 7, 9], 9), 4)

            def test_missing(self):
                self.assertEqual(find([1, 3, 5, 7, 9], 4), -1)

            def test_empty(self):
                self.assertEqual(find([], 1), -1)
        ''')},
    patch={"search.py": _SEARCH_HALF},
    expected_reward=0.75,
)


# ---- 3. durations: the patch handles hours and minutes, not seconds (2/4) ---------------------

_DURATION_BUGGY = _src('''
    import re


    def parse_duration(text):
        """Seconds in a duration such as "1h30m", "45s" or "2h5m10s"."""
        total = 0
        for amount, unit in re.findall(r"(\\d+)([hms])", text):
            total += int(amount) * {"h": 60, "m": 60, "s": 1}[unit]
        return total
    ''')

_DURATION_WRONG = _src('''
    import re


    def parse_duration(text):
        """Seconds in a duration such as "1h30m", "45s" or "2h5m10s"."""
        total = 0
        for amount, unit in re.findall(r"(\\d+)([hm])", text):
            total += int(amount) * {"h": 3600, "m": 60}[unit]
        return total
    ''')

DURATION = Task(
    name="parse-duration",
    statement="parse_duration('1h') is 60, it should be 3600.",
    files={"duration.py": _DURATION_BUGGY, "tests/__init__.py": "", "tests/test_duration.py": _tests("duration", '''
        class ParseDurationTest(unittest.TestCase):
            def test_hours(self):
                self.assertEqual(parse_duration("2h"), 7200)

            def test_hours_minutes(self):
                self.assertEqual(parse_duration("1h30m"), 5400)

            def test_seconds(self):
                self.assertEqual(parse_duration("45s"), 45)

            def test_all_units(self):
                self.assertEqual(parse_duration("2h5m10s"), 7510)
        ''')},
    patch={"duration.py": _DURATION_WRONG},
    expected_reward=0.5,
)


# ---- 4. roman numerals: the patch does not even import (0) ------------------------------------

_ROMAN_BUGGY = _src('''
    VALUES = [(1000, "M"), (500, "D"), (100, "C"), (50, "L"), (10, "X"), (5, "V"), (1, "I")]


    def to_roman(n):
        """Roman numeral of 1 <= n <= 3999."""
        out = []
        for value, numeral in VALUES:
            while n >= value:
                out.append(numeral)
                n -= value
        return "".join(out)
    ''')

# A patch that is not valid Python: the test module fails to import, which unittest reports as one
# error and no test run, so the reward is 0 (as SWE-bench scores a patch that breaks the build).
_ROMAN_BROKEN = _src('''
    VALUES = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
              (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


    def to_roman(n)
        """Roman numeral of 1 <= n <= 3999."""
        out = []
        for value, numeral in VALUES:
            while n >= value:
                out.append(numeral)
                n -= value
        return "".join(out)
    ''')

ROMAN = Task(
    name="roman-numerals",
    statement="to_roman(4) is 'IIII', it should be 'IV' (subtractive notation).",
    files={"roman.py": _ROMAN_BUGGY, "tests/__init__.py": "", "tests/test_roman.py": _tests("roman", '''
        class ToRomanTest(unittest.TestCase):
            def test_additive(self):
                self.assertEqual(to_roman(3), "III")

            def test_subtractive(self):
                self.assertEqual(to_roman(4), "IV")
                self.assertEqual(to_roman(1994), "MCMXCIV")

            def test_large(self):
                self.assertEqual(to_roman(3999), "MMMCMXCIX")
        ''')},
    patch={"roman.py": _ROMAN_BROKEN},
    expected_reward=0.0,
)


# ---- 5. slugify: the repository was right, the patch keeps it right (3/3) ---------------------

_SLUG = _src('''
    import re
    import unicodedata


    def slugify(text):
        """'Hello, World!' -> 'hello-world'."""
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    ''')

SLUG = Task(
    name="slugify",
    statement="Add a docstring to slugify() (no behaviour change).",
    files={"slug.py": _SLUG.replace('    """\'Hello, World!\' -> \'hello-world\'."""\n', ""),
           "tests/__init__.py": "", "tests/test_slug.py": _tests("slug", '''
        class SlugifyTest(unittest.TestCase):
            def test_punctuation(self):
                self.assertEqual(slugify("Hello, World!"), "hello-world")

            def test_accents(self):
                self.assertEqual(slugify("Crème brûlée"), "creme-brulee")

            def test_edges(self):
                self.assertEqual(slugify("  --a--  "), "a")
        ''')},
    patch={"slug.py": _SLUG},
    expected_reward=1.0,
)


# ---- 6. LRU cache: the patch evicts, but not the least recently *used* (2/3) ------------------

_LRU_BUGGY = _src('''
    class LRUCache:
        """At most `capacity` entries; putting one more drops the least recently used."""

        def __init__(self, capacity):
            self.capacity = capacity
            self.data = {}

        def get(self, key, default=None):
            return self.data.get(key, default)

        def put(self, key, value):
            self.data[key] = value
    ''')

_LRU_HALF = _src('''
    class LRUCache:
        """At most `capacity` entries; putting one more drops the least recently used."""

        def __init__(self, capacity):
            self.capacity = capacity
            self.data = {}

        def get(self, key, default=None):
            return self.data.get(key, default)

        def put(self, key, value):
            self.data.pop(key, None)
            self.data[key] = value
            if len(self.data) > self.capacity:
                # Drops the least recently *inserted*: get() does not refresh an entry.
                del self.data[next(iter(self.data))]
    ''')

LRU = Task(
    name="lru-cache",
    statement="LRUCache never evicts anything.",
    files={"lru.py": _LRU_BUGGY, "tests/__init__.py": "", "tests/test_lru.py": _tests("lru", '''
        class LRUCacheTest(unittest.TestCase):
            def test_get_put(self):
                c = LRUCache(2)
                c.put("a", 1)
                self.assertEqual(c.get("a"), 1)
                self.assertIsNone(c.get("b"))

            def test_evicts_beyond_capacity(self):
                c = LRUCache(2)
                for k in "abc":
                    c.put(k, k)
                self.assertEqual(len(c.data), 2)

            def test_get_refreshes(self):
                c = LRUCache(2)
                c.put("a", 1)
                c.put("b", 2)
                c.get("a")
                c.put("c", 3)
                self.assertEqual(c.get("a"), 1)
                self.assertIsNone(c.get("b"))
        ''')},
    patch={"lru.py": _LRU_HALF},
    expected_reward=round(2 / 3, 3),
)


TASKS: tuple[Task, ...] = (MERGE, SEARCH, DURATION, ROMAN, SLUG, LRU)


def task_set(n: int, tasks: Sequence[Task] | None = None) -> list[Task]:
    """n tasks: the task set (TASKS unless given) repeated, as an RL batch samples the same
    problems many times."""
    pool = tuple(tasks) if tasks else TASKS
    return [pool[i % len(pool)] for i in range(n)]
