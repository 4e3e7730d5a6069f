"""``assetfs status`` for people: the JSON status of a mount (daemon.py ``Mount.status``)
as a few lines with sizes in KiB/MiB/GiB, each upload running with its progress, and what
failed and why."""

from __future__ import annotations

import json
import time
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(count: float) -> str:
    """``4096`` -> ``"4.0 KiB"``, ``10737418240`` -> ``"10.0 GiB"``, ``512`` -> ``"512 B"``
    (powers of 1024, as ``-o cache_max`` reads them)."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in _UNITS:
        count /= 1024
        if count < 1024 or unit == _UNITS[-1]:
            break
    return f"{count:.1f} {unit}"


def _ago(when: float, now: float) -> str:
    seconds = max(0.0, now - when)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def render(mountpoint: str, status: dict[str, Any], now: float | None = None) -> str:
    """The text ``assetfs status`` prints for one mount (lines joined by newlines)."""
    now = time.time() if now is None else now
    cache, uploads, events = status["cache"], status["uploads"], status["events"]
    lines = [f"{mountpoint}: {status['url']} ({status['driver']}, pid {status['pid']})"]
    limit = cache["max_bytes"]
    share = f" ({100 * cache['used_bytes'] / limit:.0f}%)" if limit else ""
    lines.append(f"  cache: {human_size(cache['used_bytes'])} of {human_size(limit)}{share}, "
                 f"{human_size(cache['dirty_bytes'])} not uploaded yet ({cache['dir']})")
    if "hits" in cache:
        lines.append(f"  reads: {cache['hits']} from the cache, {cache['misses']} from the "
                     f"store, {human_size(cache['downloaded_bytes'])} downloaded")
    dirty = status["dirty_files"]
    lines.append(f"  dirty files: {len(dirty)}" + (f" ({', '.join(dirty[:5])}"
                                                   + (", ..." if len(dirty) > 5 else "") + ")"
                                                   if dirty else ""))
    lines.append(f"  uploads: {uploads['files']} files, {human_size(uploads['bytes'])} done"
                 + (f", {uploads['queued']} queued" if uploads.get("queued") else "")
                 + f", {uploads['retries']} failed attempts, {uploads['conflicts']} conflicts")
    for running in uploads.get("in_flight", []):
        size, sent = running["bytes"], running["sent_bytes"]
        took = max(0.0, now - running["started"]) if running["started"] else 0.0
        progress = (f"{human_size(sent)} of {human_size(size)} ({100 * sent / size:.0f}%)"
                    if sent is not None and size else f"{human_size(size)}")
        rate = f", {human_size(sent / took)}/s" if sent and took > 0.5 else ""
        lines.append(f"    uploading {running['path']}: {progress}, {took:.0f} s{rate}")
    for failed in uploads.get("failing", []):
        lines.append(f"    failing {failed['path']}: {failed['error']} "
                     f"({failed['attempts']} attempts, last {_ago(failed['since'], now)}; "
                     "retried until it works)")
    for lost in uploads.get("given_up") or []:
        lines.append(f"    not uploaded, cannot be: {lost['path']} ({lost['reason']}); "
                     f"saved as {lost['saved_as']}")
    if uploads["last_error"] and not uploads.get("failing"):
        when, message = uploads["last_error"]
        lines.append(f"  last upload error ({_ago(when, now)}): {message}")
    if uploads["conflicts"]:
        lines.append(f"  conflict copies: {', '.join(uploads['conflict_files'][-5:])}")
    last = events["last_event"]
    lines.append(f"  events: {events['state']}, {events['received']} received, last "
                 + (_ago(last, now) if last else "never")
                 + (f", error: {events['last_error']}" if events.get("last_error") else ""))
    driver_state = status.get("driver_state")
    if driver_state:
        lines.append(f"  driver: {json.dumps(driver_state)}")
    loop = status.get("loop")
    if isinstance(loop, dict):
        lines.append(f"  event loop: longest step {1000 * loop['longest_step_s']:.1f} ms "
                     f"({loop['longest_task']}), {loop['stalls']} over "
                     f"{1000 * loop['stall_s']:.0f} ms")
    if status.get("metrics"):
        lines.append(f"  metrics: {status['metrics']}")
    return "\n".join(lines)
