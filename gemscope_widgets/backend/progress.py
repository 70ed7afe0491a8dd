"""The one progress bar of long work: ``tqdm.auto``, leaving a true line behind in a saved notebook.

In a Jupyter kernel ``tqdm.auto`` draws an ipywidgets bar whose output also carries a plain-text copy of the bar
*as it was first drawn* ("0%| | 0/4096"). A notebook saved without widget state shows that copy for ever, as if the
work had stalled at zero. :class:`progress_bar` draws the same bar under a display id and, when it closes, replaces the
whole output with one plain-text line of how it ended: the finished count and time, "stopped at n/total" after an
error or an interrupt, or nothing at all for a bar made with ``leave=False``. Outside a kernel it is plain tqdm.
"""

from __future__ import annotations

from typing import Any

from IPython.display import display
from tqdm.auto import tqdm as auto_tqdm
from tqdm.notebook import tqdm_notebook

_IN_NOTEBOOK = issubclass(auto_tqdm, tqdm_notebook)


class progress_bar(auto_tqdm):  # noqa: N801 - used like tqdm, its base
    """``tqdm.auto.tqdm`` with the same arguments; in a notebook the bar's output ends as a line of how it ended.

    Source: tqdm (``tqdm.notebook``); the replacement uses IPython's ``display(..., display_id=True)`` handles.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _IN_NOTEBOOK:
            kwargs["display"] = False  # drawn below, under a display id that close() can replace
        self._handle: Any = None
        super().__init__(*args, **kwargs)
        if _IN_NOTEBOOK and not self.disable and self.delay <= 0:
            self._handle = display(self.container, display_id=True)

    def close(self) -> None:
        if self.disable:
            return
        finished = not self.total or self.n >= self.total
        super().close()
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        if finished and not self.leave:
            handle.update({"text/plain": ""}, raw=True)
            return
        line = self.format_meter(**{**self.format_dict, "bar_format": "{desc}: {n_fmt}/{total_fmt} [{elapsed}]"})
        if not finished:
            line = f"{line} (stopped at {self.n} of {self.total}: interrupted or failed)"
        handle.update({"text/plain": line}, raw=True)
