"""The tree of dvsan-shell: configshell-fb nodes over the station's REST API.

    /units/<unit>/disks/<disk>/<device>     the pool as the units report it
    /volumes/<id>                           every volume: info, assign, release, wipe
    /hosts/<host>/assignments/<id>          enrolled hosts and what they hold
    /tasks/<id>                             changes under way and done: info, wait, cancel
    /users/<name>                           people and their grants (admins)
    /audit/<id>                             who did what (admins)

A collection loads its children from the station only when it is visited (`ls`, `cd`, a path
through it, tab completion): starting the shell costs no call, and `ls /` none either. `ls` of a
collection always asks again; a path to one object asks for that object alone where the station
has a route for it. The docstring of each `ui_command_*` is its help text: written for operators.
"""

import getpass
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from configshell import ConfigNode, ExecutionError

from dvsan.errors import InvalidInput
from dvsan.keyfiles import read_secret_file, write_secret_file
from dvsan.sizes import parse_size
from station.shell import render
from station.shell.client import Client, RouteMissing
from station.shell.errors import Refused, UsageError

MiB = 1024**2

HELP_INTRO = """
    dvsan-shell: the admin shell of a dvsan station
    ===============================================
    Every object the station knows is a path in this tree:

      /units/UNIT/disks/DISK/DEVICE   storage units, their disks and the volumes on them
      /volumes/ID                     the virtual storage pool, one node per volume
      /hosts/HOST/assignments/ID      enrolled hosts and the volumes they hold
      /tasks/ID                       changes under way and finished (assign, release, wipe...)
      /users/NAME                     people who may use the station (admins)
      /audit/ID                       who did what, newest first (admins)

    Move with `cd PATH` (`cd ..`, `cd /`), look with `ls [PATH] [DEPTH]` and `info`, and run a
    command on another node by putting its path first: `/volumes/17 info`. TAB completes paths,
    commands and their parameters. Add `--json` to a command for machine-readable output.
    Parameters are `value` or `name=value`, e.g. `/hosts/host-b assign size=80GiB`.

    Long changes (assign, release, wipe, partition) run as tasks at the station: the shell shows
    their progress until they end. Ctrl-C stops watching, not the task: `/tasks/ID wait` resumes.
    Everything goes through the station's REST API with your own login and its permissions.
    """


class Output:
    """Where a command's answer goes: text or JSON on stdout, progress and warnings on stderr."""

    def __init__(self, json: bool = False) -> None:
        self.json = json
        self.tty = sys.stderr.isatty()
        self._partial = False

    def width(self) -> int:
        return max(60, min(shutil.get_terminal_size((100, 24)).columns, 160))

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """The command's answer: `data` as JSON in JSON mode, else `text`."""
        self._end_partial()
        if self.json:
            print(render.to_json(data), flush=True)
        else:
            print(text() if callable(text) else text, flush=True)

    def note(self, text: str) -> None:
        """Something for the operator beside the answer (stderr, so stdout stays parseable)."""
        self._end_partial()
        print(text, file=sys.stderr, flush=True)

    def progress(self, task: dict[str, Any]) -> None:
        """A task's progress: one line rewritten in place on a terminal, a line per change otherwise."""
        line = render.task_line(task)
        if self.tty:
            # NOTE: a line rewritten in place, and wiped once the task has ended: the command's
            # own answer (or error) says how it ended
            cols = shutil.get_terminal_size((100, 24)).columns
            ended = task["state"] in ("succeeded", "failed", "cancelled", "interrupted")
            sys.stderr.write("\r\x1b[K" + ("" if ended else line[:cols - 1]))
            self._partial = not ended
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)

    def _end_partial(self) -> None:
        if self._partial:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._partial = False


def flag(value: str | bool | None, name: str, default: bool = False) -> bool:
    """A yes/no parameter: true/false, yes/no, on/off, 1/0."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise UsageError(f"{name}={value!r}: give true or false")


def size_arg(value: str) -> str:
    """A size as the operator typed it ("80GiB", "512M", "1073741824"), checked before sending."""
    try:
        parse_size(value)
    except InvalidInput as e:
        raise UsageError(str(e)) from None
    return value


def number_arg(value: str | int, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r}: give a whole number") from None
    if n < 1:
        raise UsageError(f"{name}={value!r}: give a number of at least 1")
    return n


def complete(options: Iterable[str], text: str) -> list[str]:
    """configshell's completion answer: the options that start with `text`; a lone one gets a
    trailing space so the cursor moves on."""
    out = sorted({o for o in options if o.startswith(text)})
    return [out[0] + " "] if len(out) == 1 else out


def natural(name: str) -> tuple[str, int]:
    """Names sorted with their trailing number as a number: vdb2 before vdb10, 9 before 10."""
    m = re.fullmatch(r"(.*?)(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


class Node(ConfigNode):
    """What every dvsan-shell node has: the station client, the output, `ls`, `info`, `cd`."""

    help_intro = HELP_INTRO
    description = ""

    def __init__(self, name: str, parent: "Node | None" = None, shell: Any = None) -> None:
        super().__init__(name, parent, shell)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def root(self) -> "Root":
        node: Any = self
        while node.parent is not None:
            node = node.parent
        return node  # type: ignore[no-any-return]

    @property
    def api(self) -> Client:
        return self.root.client()

    @property
    def out(self) -> Output:
        return self.root.output

    def list_children(self) -> list["Node"]:
        """The children, loading them from the station first if this node loads lazily."""
        return sorted(self._children, key=lambda c: natural(c.name))

    # NOTE: configshell's ConfigNode binds `children` to its own _list_children when the class is
    # made; a property here is how a subclass gives it children loaded on demand.
    children = property(lambda self: self.list_children())

    def summary_text(self) -> str:
        return self.description

    def summary(self) -> tuple[str, bool | None]:
        return self.summary_text(), None

    def as_data(self) -> Any:
        return {"path": self.path, "summary": self.summary_text()}

    def prompt_msg(self) -> str:
        return "dvsan:"

    def invalidate(self, *paths: str) -> None:
        """Forget what the given collections loaded: the next visit asks the station again."""
        for p in paths:
            try:
                node = self.get_node(p)
            except (ValueError, ExecutionError):
                continue
            if isinstance(node, Collection):
                node.forget()

    def follow(self, task: dict[str, Any]) -> dict[str, Any]:
        """Show a task's progress until it ends; Ctrl-C stops watching (the task goes on)."""
        try:
            return self.api.follow(task, self.out.progress, deadline=self.root.task_deadline())
        except KeyboardInterrupt:
            self.out.note(f"stopped watching task {task['id']}; it goes on at the station: "
                          f"`/tasks/{task['id']} wait` follows it again")
            raise

    # -- commands every node has ----------------------------------------------------------------

    def ui_command_ls(self, path: str | None = None, depth: str | None = None) -> None:
        """
        Shows a node and what is under it, one line each with a short summary.

        PATH is the node to show (the current one if left out): absolute (`/volumes`) or
        relative (`..`, `disks/vdb`). DEPTH is how many levels below it to show (1 if left out):
        `ls /units 3` shows each unit, its disks and their volumes. Each level is asked of the
        station when it is shown, so a deep `ls` of a large pool takes longer.

        With --json: the objects under the node, as the station describes them.
        """
        try:
            target = self.get_node(path)
        except ValueError as e:
            raise ExecutionError(str(e)) from None
        levels = 1 if depth is None else number_arg(depth, "depth")
        if isinstance(target, Collection):
            target.load()                         # a visit: ask the station again
        elif isinstance(target, Item):
            target.refresh()
        if self.out.json:
            if isinstance(target, Collection):
                data: Any = target.as_data()
            elif target.children:
                data = {"path": target.path, "summary": target.summary_text(),
                        "children": [{"name": c.name, "summary": c.summary_text()} for c in target.children]}
            else:
                data = target.as_data()
            self.out.emit(data, "")
            return
        width = self.out.width()
        lines = [render.dots("o- ", target.name, target.summary_text(), width)]

        def walk(node: Node, indent: str, left: int) -> None:
            if left <= 0:
                return
            if left == 1 and isinstance(node, Collection):      # the last level: from data, no nodes
                kind = node.child_type
                lines.extend(render.dots(indent + "o- ", n, kind.summarize(d), width)
                             for n, d in node.listing())
                return
            for child in node.children:
                kids = child.children if left > 1 else None     # loaded first: its summary counts them
                lines.append(render.dots(indent + "o- ", child.name, child.summary_text(), width))
                if kids:
                    walk(child, indent + "  ", left - 1)
        walk(target, "  ", levels)
        self.out.emit(None, "\n".join(lines))

    def ui_complete_ls(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "depth":
            return complete(["1", "2", "3", "4"], text)
        return super().ui_complete_ls(parameters, text, current_param) or []  # type: ignore[no-any-return]

    def ui_command_cd(self, path: str | None = None) -> Any:
        """
        Moves to another node of the tree: `cd /volumes`, `cd ..` (up one level), `cd /` (the
        top; also `cd` alone), `cd <` and `cd >` (back and forward in the places you have been).
        The prompt shows where you are. TAB completes the path.
        """
        return super().ui_command_cd("/" if path is None else path)

    def ui_command_info(self) -> None:
        """
        Shows everything the station says about this node, asked afresh.

        With --json: the station's own description of it.
        """
        self.out.emit(self.as_data(), lambda: render.info(self.as_data()))


class Item(Node):
    """One object of the station (a unit, a volume, a task...): its data as last asked."""

    FRESH = 1.0     # seconds: data asked for this recently is not asked for again (one command line)
    below: ClassVar[tuple[tuple[str, type["Collection"]], ...]] = ()   # collections under each one

    def __init__(self, name: str, parent: Node, data: dict[str, Any]) -> None:
        super().__init__(name, parent)
        self.data = data
        for child, kind in self.below:
            kind(child, self)

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data, self.fetched = value, time.monotonic()

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        """The one-line summary `ls` shows for an object of this kind, from its data alone."""
        return ""

    def summary_text(self) -> str:
        return self.summarize(self.data)

    def as_data(self) -> Any:
        return self.data

    def refresh(self, force: bool = False) -> dict[str, Any]:
        """The object's data asked afresh (unless asked within FRESH seconds and not `force`)."""
        if force or time.monotonic() - self.fetched >= self.FRESH:
            self.data = self.fetch()
        return self.data

    def fetch(self) -> dict[str, Any]:
        parent = self.parent
        assert isinstance(parent, Collection)
        fresh = parent.fetch_one(self.name)
        if fresh is Collection.UNSUPPORTED:
            parent.load()
            fresh = parent.data_of(self.name)
        if fresh is None:
            raise Refused(404, f"{self.path} is gone: the station no longer has it")
        return fresh  # type: ignore[no-any-return]

    def ui_command_info(self) -> None:
        """
        Shows everything the station says about this object, asked afresh (secrets left out).

        With --json: the station's own description of it.
        """
        data = self.refresh()
        self.out.emit(data, lambda: render.info(data))


class Collection(Node):
    """Objects of one kind, loaded from the station when visited (never at start).

    What the station answered is kept as data; a node is made for an object only when something
    needs one (a path through it, tab completion): `ls` of a thousand volumes makes none."""

    UNSUPPORTED: ClassVar[Any] = object()
    child_type: ClassVar[type[Item]] = Item
    noun: ClassVar[tuple[str, str]] = ("object", "objects")
    numeric: ClassVar[bool] = False          # children named by id: other names never exist
    newest_first: ClassVar[bool] = False     # listed by id, highest first (tasks, audit)

    def __init__(self, name: str, parent: Node) -> None:
        super().__init__(name, parent)
        self._data: dict[str, dict[str, Any]] = {}     # what the station answered, by name
        self._by_name: dict[str, Item] = {}            # the nodes made so far
        self.loaded = False

    route: ClassVar[str] = ""                # what lists them: GET /api/v1{route}
    key_field: ClassVar[str] = "id"          # the field that names each child
    limit: ClassVar[int | None] = None       # how many the listing asks for (newest first)

    # what a collection kind says
    def fetch_all(self) -> list[dict[str, Any]]:
        return self.api.get(self.route, limit=self.limit)  # type: ignore[no-any-return]

    def fetch_one(self, name: str) -> Any:
        """The object `name` alone (None: the station has none), or UNSUPPORTED: ask for all."""
        return self.UNSUPPORTED

    def key(self, data: dict[str, Any]) -> str:
        return str(data[self.key_field])

    # loading
    def load(self) -> None:
        """Ask the station for the whole collection; nodes of what is gone are dropped, those of
        what is still there get the fresh data."""
        self._data = {self.key(d): d for d in self.fetch_all()}
        for name in [n for n in self._by_name if n not in self._data]:
            self.remove_child(self._by_name.pop(name))
        for name, node in self._by_name.items():
            node.data = self._data[name]
        self.loaded = True

    def forget(self) -> None:
        self.loaded = False

    def _node(self, name: str, data: dict[str, Any]) -> Item:
        node = self._by_name.get(name)
        if node is None:
            node = self._by_name[name] = self.child_type(name, self, data)
        else:
            node.data = data
        return node

    def data_of(self, name: str) -> dict[str, Any] | None:
        return self._data.get(name)

    def names(self) -> list[str]:
        """The names of what the collection holds, in listing order (loading it if need be)."""
        if not self.loaded:
            self.load()
        return sorted(self._data, key=natural, reverse=self.newest_first)

    def listing(self) -> list[tuple[str, dict[str, Any]]]:
        return [(n, self._data[n]) for n in self.names()]

    def list_children(self) -> list[Node]:
        return [self._node(n, d) for n, d in self.listing()]

    def get_child(self, name: str) -> Node:
        """The child `name`: known already, else asked for alone, else (no such route) found in
        a fresh listing."""
        if name in self._data:
            return self._node(name, self._data[name])
        if not (self.numeric and not name.isdigit()):
            one = self.fetch_one(name)
            if one is self.UNSUPPORTED:
                self.load()
                if name in self._data:
                    return self._node(name, self._data[name])
            elif one is not None:
                self._data[name] = one
                return self._node(name, one)
        raise ValueError(f"No such path {self.path.rstrip('/')}/{name}: `ls {self.path}` lists "
                         f"the {self.noun[1]} there are")

    def summary_text(self) -> str:
        if not self.loaded:
            return self.description
        n = len(self._data)
        return f"{n} {self.noun[0] if n == 1 else self.noun[1]}"

    def as_data(self) -> Any:
        return [d for _, d in self.listing()]

    def ui_command_info(self) -> None:
        """
        Shows what this collection holds, asked afresh: one line per object.

        With --json: the station's description of each object.
        """
        self.load()
        rows = self.listing()
        self.out.emit([d for _, d in rows], lambda: "\n".join(
            f"{n}: {self.child_type.summarize(d)}" for n, d in rows) or f"no {self.noun[1]}")


def _missing(api: Client, method: str, path: str, **kw: Any) -> Any:
    """A single-object GET: its data, None if the station has no such object, UNSUPPORTED if
    the station has no such route."""
    try:
        return api.call(method, path, missing_ok=True, **kw)
    except RouteMissing:
        return Collection.UNSUPPORTED
    except Refused as e:
        if e.status == 404:
            return None
        raise


# -- volumes -------------------------------------------------------------------------------------

class VolumeNode(Item):
    """A volume of the pool: `info`, `assign` it to a host, `release` it, `wipe` it again."""

    @property
    def volume_id(self) -> int:
        return int(self.data["id"])

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.volume_summary(data)

    def fetch(self) -> dict[str, Any]:
        one = self.root.one_volume(self.volume_id)
        if one is Collection.UNSUPPORTED:
            vols = self.api.get("/volumes", unit=self.data["unit_name"])
            one = next((v for v in vols if v["id"] == self.volume_id), None)
        if one is None:
            raise Refused(404, f"volume {self.volume_id} is gone: the station no longer has it")
        return one  # type: ignore[no-any-return]

    def ui_command_assign(self, host: str, initiator: str | None = None, address: str | None = None,
                          mutual_chap: str = "false") -> None:
        """
        Gives this very volume to a host (the operator's choice, not the pool's best fit).

        HOST is an enrolled host. INITIATOR is the host's iSCSI initiator name: it may be left
        out when the host has only one enrolled. ADDRESS is the host's IP address on the storage
        network: it may be left out when the host already holds storage (the same address is
        used). MUTUAL_CHAP=true makes the unit prove itself to the host too.

        The station exports the volume on its unit to that initiator only, with CHAP; the host
        agent picks it up with `dvsan-host-agent sync`. Refused (409) if the volume is assigned,
        not online, or not wiped yet; 503 if its unit does not confirm.

        Example: /volumes/17 assign host-b address=10.0.0.21
        """
        self.root.assign(self, host, volume_id=self.volume_id, initiator=initiator,
                         address=address, mutual_chap=flag(mutual_chap, "mutual_chap"))
        self.refresh(force=True)

    def ui_complete_assign(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        return self.root.complete_assign(parameters, text, current_param)

    def ui_command_release(self) -> None:
        """
        Takes this volume back from the host that holds it. The unit drops the export (the
        host's I/O to it stops), then zeroes the whole volume; it is free again once the wipe
        has succeeded (a `wipe` task follows the release: `/tasks/ID wait` shows it).
        """
        host = self.refresh(force=True).get("assigned_to")
        if not host:
            raise Refused(409, f"volume {self.volume_id} is not assigned to any host")
        mine = [a for a in self.api.get("/assignments", host=host) if a["volume_id"] == self.volume_id]
        if not mine:
            raise Refused(409, f"volume {self.volume_id} has no assignment the station shows you")
        self.root.release(self, mine[0]["id"])
        self.refresh(force=True)

    def ui_command_wipe(self) -> None:
        """
        Orders again the wipe of a released volume (one whose wipe failed, or never ran): the
        unit zeroes it, with progress shown here. Refused (409) if the volume is assigned,
        already clean, or busy with another task.
        """
        task = self.api.call("POST", f"/volumes/{self.volume_id}/wipe")
        self.out.note(f"wipe of volume {self.volume_id}: task {task['id']}")
        done = self.follow(task)
        self.invalidate("/volumes", "/tasks")
        self.out.emit(done, f"volume {self.volume_id} wiped (task {done['id']}): {done['message']}")


class VolumesNode(Collection):
    """Every volume of the pool."""

    child_type = VolumeNode
    noun = ("volume", "volumes")
    numeric = True
    description = "the virtual storage pool"
    route = "/volumes"

    def fetch_one(self, name: str) -> Any:
        return self.root.one_volume(int(name))

    def summary_text(self) -> str:
        if not self.loaded:
            return self.description
        vols = list(self._data.values())
        free = sum(1 for v in vols if v["state"] == "online" and not v.get("assigned_to")
                   and v.get("wipe_state", "clean") == "clean")
        total = sum(v["size_bytes"] for v in vols)
        return f"{len(vols)} volumes, {render.size(total)}, {free} free"


# -- units, disks, devices -------------------------------------------------------------------------

class DeviceNode(VolumeNode):
    """A volume seen under its unit's disk (`/units/unit-a/disks/vdb/vdb2`): same commands."""


class PartitionNode(Item):
    """A partition the unit reported that is not a volume of the pool (not offered, or new)."""

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.partition_summary(data)

    def fetch(self) -> dict[str, Any]:
        disk = self.parent
        assert isinstance(disk, DiskNode)
        for p in disk.refresh(force=True).get("partitions") or []:
            if p["device"] == self.name:
                return p  # type: ignore[no-any-return]
        raise Refused(404, f"{self.path} is gone: the unit no longer reports it")


class DiskNode(Item):
    """A disk of a unit: its volumes, and `partition` to change its partition table."""

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.disk_summary(data)

    @property
    def unit(self) -> str:
        return self.parent.parent.name  # type: ignore[union-attr]

    def list_children(self) -> list[Node]:
        """Its partitions as the unit reported them (the disks route), each a volume node when
        the pool offers it; and the pool's volumes on this disk the report does not name."""
        disks = self.parent
        assert isinstance(disks, DisksNode)
        if not disks.loaded:
            disks.load()
        fresh = disks.data_of(self.name)
        if fresh is not None:
            self.data = fresh
        vols = {v["device"]: v for v in disks.volumes_of(self.name)}
        want: dict[str, tuple[type[Item], dict[str, Any]]] = {}
        for p in self.data.get("partitions") or []:
            dev = p["device"]
            want[dev] = (DeviceNode, vols.pop(dev)) if dev in vols else (PartitionNode, p)
        for dev, v in vols.items():
            want[dev] = (DeviceNode, v)
        for c in list(self._children):
            if c.name not in want or type(c) is not want[c.name][0]:
                self.remove_child(c)
        have = {c.name: c for c in self._children}
        for dev, (kind, d) in want.items():
            if dev in have:
                have[dev].data = d                    # type: ignore[attr-defined]
            else:
                kind(dev, self, d)                    # type: ignore[arg-type]
        return super().list_children()

    def get_child(self, name: str) -> Node:
        for c in self.list_children():
            if c.name == name:
                return c
        raise ValueError(f"No such path {self.path}/{name}: `ls {self.path}` lists its volumes")

    def fetch(self) -> dict[str, Any]:
        disks = self.parent
        assert isinstance(disks, DisksNode)
        disks.load()
        data = disks.data_of(self.name)
        if data is None:
            raise Refused(404, f"{self.path} is gone: unit {self.unit} no longer reports disk {self.name}")
        return data

    def ui_command_partition(self, label: str | None = None, create: str | None = None,
                             delete: str | None = None) -> None:
        """
        Changes this disk's partition table, carried out by the unit agent as a task.

        LABEL=gpt writes a new, empty GPT table first (every partition there is must then be in
        DELETE). DELETE is a comma-separated list of partition numbers to remove (`ls` shows
        them). CREATE is a comma-separated list of sizes of new partitions, each at least 1 MiB
        and rounded up to whole MiB, placed in the first free space that fits, in that order;
        a size may carry a GPT partition name after a colon (10GiB:dvsan-1).

        The unit checks everything at the moment of the change and refuses, naming what is in
        the way: its system disk; a partition that is mounted, swap, held by dm/md/LVM,
        exported, assigned or being wiped. The change is all or nothing: a failure leaves the
        old table. The pool follows the new table.

        Examples: /units/unit-a/disks/vdc partition label=gpt create=1GiB,1GiB,2GiB,4GiB
                  /units/unit-a/disks/vdc partition delete=3,4 create=6GiB
        """
        body: dict[str, Any] = {}
        if label is not None:
            if label.lower() != "gpt":
                raise UsageError(f"label={label!r}: only gpt is offered")
            body["label"] = "gpt"
        if delete:
            body["delete"] = [number_arg(n.strip(), "delete") for n in delete.split(",") if n.strip()]
        if create:
            body["create"] = [new_partition(item) for item in create.split(",") if item.strip()]
        if not body:
            raise UsageError("nothing to change: give label=gpt, create=SIZE[,SIZE...] and/or "
                             "delete=NUMBER[,NUMBER...] (see `help partition`)")
        path = f"/units/{self.unit}/disks/{self.name}/layout"
        try:
            r = self.api.call("POST", path, json=body, missing_ok=True)
        except RouteMissing:
            raise Refused(404, f"this station cannot partition disks (it has no POST /api/v1{path}): "
                               "it needs a newer dvsan-station") from None
        if isinstance(r, dict) and "state" in r and "kind" in r:      # a task: follow it
            self.out.note(f"partitioning {self.unit} {self.name}: task {r['id']}")
            r = self.follow(r)
        self.invalidate(f"/units/{self.unit}/disks", "/volumes", "/tasks")
        res = (r.get("result") if isinstance(r, dict) else None) or {}
        what = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in res.items()
                         if k in ("deleted", "created") and isinstance(v, list) and v)
        self.out.emit(r, f"{self.unit} {self.name}: the new partition table is applied"
                         f"{' (' + what + ')' if what else ''}")

    def ui_complete_partition(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "label":
            return complete(["gpt"], text)
        if current_param == "delete":
            free = [str(p["number"]) for p in self.data.get("partitions") or [] if not p.get("in_use")]
            return complete(free, text)
        if current_param == "create":
            return complete(["1GiB", "10GiB", "100GiB"], text)
        return []


def new_partition(item: str) -> dict[str, Any]:
    """`10GiB` or `10GiB:dvsan-1` as the layout route takes it: bytes, and a GPT name if given."""
    text, _, name = item.strip().partition(":")
    n = parse_size(size_arg(text.strip()))
    if n < MiB:
        raise UsageError(f"create={text.strip()!r}: a partition is at least 1 MiB")
    return {"size_bytes": n, "name": name.strip()} if name.strip() else {"size_bytes": n}


class DisksNode(Collection):
    """The disks of one unit: from the station's disks route, else from its volumes."""

    child_type = DiskNode
    noun = ("disk", "disks")
    description = "disks of the unit"

    def __init__(self, name: str, parent: Node) -> None:
        super().__init__(name, parent)
        self._volumes: list[dict[str, Any]] = []

    @property
    def unit(self) -> str:
        return self.parent.name  # type: ignore[union-attr]

    def key(self, data: dict[str, Any]) -> str:
        return str(data.get("name") or data.get("disk") or data.get("device"))

    def fetch_all(self) -> list[dict[str, Any]]:
        self._volumes = self.api.get("/volumes", unit=self.unit)
        grouped = render.disks_of(self._volumes)
        reported: list[dict[str, Any]] = []
        if "disks" not in self.root.missing_routes:
            try:
                reported = self.api.call("GET", f"/units/{self.unit}/disks", missing_ok=True)
            except RouteMissing:
                self.root.missing_routes.add("disks")       # an older station: ask no more
        # the unit's own report first, with its volumes counted; then disks only volumes name
        # (a unit agent that does not report its disks)
        out = [{**grouped.pop(self.key(d), {}), **d} for d in reported]
        return out + list(grouped.values())

    def volumes_of(self, disk: str) -> list[dict[str, Any]]:
        return [v for v in self._volumes if v["disk"] == disk]


class UnitNode(Item):
    """A storage unit: its state, where hosts reach it, and its disks below."""

    below = (("disks", DisksNode),)

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.unit_summary(data)


class UnitsNode(Collection):
    child_type = UnitNode
    noun = ("unit", "units")
    description = "storage units"
    route = "/units"
    key_field = "name"

    def fetch_one(self, name: str) -> Any:
        return _missing(self.api, "GET", f"/units/{name}")


# -- hosts and their assignments -----------------------------------------------------------------

class AssignmentNode(Item):
    """What a host holds: one volume, exported to one of its initiators."""

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.assignment_summary(data)

    def ui_command_release(self) -> None:
        """
        Takes this volume back from the host. The unit drops the export (the host's I/O to it
        stops), then zeroes the whole volume; it is free again once the wipe has succeeded (a
        `wipe` task follows the release: `/tasks/ID wait` shows it).
        """
        self.root.release(self, int(self.name))


class AssignmentsNode(Collection):
    child_type = AssignmentNode
    noun = ("assignment", "assignments")
    numeric = True
    description = "volumes the host holds"

    @property
    def host(self) -> str:
        return self.parent.name  # type: ignore[union-attr]

    def fetch_all(self) -> list[dict[str, Any]]:
        return self.api.get("/assignments", host=self.host)  # type: ignore[no-any-return]

    def fetch_one(self, name: str) -> Any:
        a = _missing(self.api, "GET", f"/assignments/{name}")
        return a if a is self.UNSUPPORTED or a is None or a.get("host") == self.host else None

    def ui_command_release(self, assignment: str) -> None:
        """
        Takes a volume back from this host: ASSIGNMENT is the assignment's id (`ls` shows
        them). The unit drops the export, then zeroes the volume before anyone else gets it.
        """
        node = self.get_child(str(number_arg(assignment, "assignment")))
        self.root.release(node, int(node.name))

    def ui_complete_release(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        return complete([c.name for c in self.children], text) if current_param == "assignment" else []


class HostNode(Item):
    """An enrolled host: its initiator names, what it holds, and `assign` to give it storage."""

    below = (("assignments", AssignmentsNode),)

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.host_summary(data)

    def ui_command_assign(self, size: str | None = None, volume: str | None = None,
                          initiator: str | None = None, address: str | None = None,
                          mutual_chap: str = "false") -> None:
        """
        Gives this host storage: SIZE picks the smallest free volume that holds it (e.g.
        size=80GiB, 512M, 1TB; K, M, G, T are binary, KB.. decimal), or VOLUME=ID gives that very
        volume. INITIATOR is the host's iSCSI initiator name: it may be left out when the host
        has only one enrolled. ADDRESS is the host's IP address on the storage network: it may
        be left out when the host already holds storage. MUTUAL_CHAP=true makes the unit prove
        itself to the host too.

        Refused (409) when no free volume is large enough (the message names the largest free
        one) or the volume is not free; 503 when the unit does not confirm (nothing is kept).

        Examples: /hosts/host-b assign 80GiB address=10.0.0.21
                  /hosts/host-b assign volume=17
        """
        if (size is None) == (volume is None):
            raise UsageError("give either a SIZE (e.g. assign 80GiB) or volume=ID, not both")
        self.root.assign(self, self.name, size=size_arg(size) if size else None,
                         volume_id=number_arg(volume, "volume") if volume else None,
                         initiator=initiator, address=address,
                         mutual_chap=flag(mutual_chap, "mutual_chap"))

    def ui_complete_assign(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        return self.root.complete_assign({**parameters, "host": self.name}, text, current_param)


class HostsNode(Collection):
    child_type = HostNode
    noun = ("host", "hosts")
    description = "enrolled hosts"
    route = "/hosts"
    key_field = "name"

    def ui_command_enroll(self, name: str, initiators: str, token_file: str | None = None) -> None:
        """
        Enrols a host: NAME (lower-case letters, digits, '-', '.') and its iSCSI initiator
        name, as /etc/iscsi/initiatorname.iscsi on the host holds it (several: separate them
        with commas). The station answers the host's API token once: with TOKEN_FILE=PATH it is
        written to that file (mode 0600; an existing file is never overwritten), else printed.
        Either way it goes to /etc/dvsan/host.token (mode 0600) on the host.

        Example: /hosts enroll host-b iqn.1993-08.org.debian:01:host-b token_file=host-b.token
        """
        iqns = [i.strip() for i in initiators.split(",") if i.strip()]
        if not iqns:
            raise UsageError("give the host's initiator name(s), e.g. iqn.1993-08.org.debian:01:host-b")
        path = None
        if token_file is not None:
            path = Path(token_file).expanduser()
            if path.exists():
                raise UsageError(f"{path} exists: choose another file (a token file is never overwritten)")
            if not path.parent.is_dir():
                raise UsageError(f"{path.parent} is not a directory")
        self._enroll(name, iqns, path)

    def _enroll(self, name: str, initiators: list[str], token_file: Path | None) -> None:
        h = self.api.call("POST", "/hosts", json={"name": name, "initiator_iqns": initiators})
        token = h.pop("token")
        self.forget()
        shown = {**h, "token_id": token["id"], "token_expires_at": token["expires_at"]}
        if token_file is not None:
            write_secret_file(token_file, token["token"] + "\n")
            shown["token_file"] = str(token_file)
            self.out.emit(shown, f"host {name} enrolled ({', '.join(initiators)}); its token is in "
                                 f"{token_file} (0600): copy it to /etc/dvsan/host.token on the host")
            return
        shown["token"] = token["token"]
        self.out.emit(shown, f"host {name} enrolled ({', '.join(initiators)}). Its API token, shown "
                             f"this once:\n{token['token']}\nput it in /etc/dvsan/host.token "
                             "(mode 0600) on the host")


# -- tasks -----------------------------------------------------------------------------------------

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TASK_KINDS = ("assign", "release", "wipe", "partition")


class TaskNode(Item):
    """A change asked of the station: its state and progress; `wait` for it, `cancel` it."""

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.task_summary(data)

    def ui_command_wait(self) -> None:
        """
        Follows this task to its end, showing its progress. Ctrl-C stops watching; the task
        goes on. Fails (exit code 1 in one-shot mode) if the task does not succeed.
        """
        done = self.follow(self.refresh(force=True))
        self.data = done
        self.out.emit(done, lambda: render.task_line(done))

    def ui_command_cancel(self) -> None:
        """
        Cancels this task if it has not started yet (queued). A running task cannot be
        cancelled: its change is under way on a unit (409).
        """
        t = self.api.call("POST", f"/tasks/{self.name}/cancel")
        self.data = t
        self.out.emit(t, lambda: render.task_line(t))


class TasksNode(Collection):
    child_type = TaskNode
    noun = ("task", "tasks")
    numeric = True
    newest_first = True
    description = "changes, newest first"
    route = "/tasks"
    limit = 100

    def fetch_one(self, name: str) -> Any:
        return _missing(self.api, "GET", f"/tasks/{name}")

    def ui_command_list(self, state: str | None = None, kind: str | None = None,
                        host: str | None = None, limit: str = "50") -> None:
        """
        Lists tasks, newest first, filtered: STATE (queued, running, succeeded, failed,
        cancelled, interrupted), KIND (assign, release, wipe...), HOST (tasks about that
        host's storage), LIMIT (how many, 50 if left out).

        Example: /tasks list state=running
        """
        if state is not None and state not in TASK_STATES:
            raise UsageError(f"state={state!r}: one of {', '.join(TASK_STATES)}")
        rows = self.api.get("/tasks", state=state, kind=kind, host=host, limit=number_arg(limit, "limit"))
        self.out.emit(rows, lambda: "\n".join(f"{t['id']:>6}  {render.task_summary(t)}"
                                              f"{'  ' + (t.get('error') or '') if t['state'] == 'failed' else ''}"
                                              for t in rows) or "no such tasks")

    def ui_complete_list(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "state":
            return complete(TASK_STATES, text)
        if current_param == "kind":
            return complete(TASK_KINDS, text)
        return []


# -- users and grants ----------------------------------------------------------------------------

ROLES = ("admin", "operator", "viewer")
GRANT_ROLES = ("operator", "viewer")


class UserNode(Item):
    """A person who may use the station: role, grants on objects."""

    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.user_summary(data)

    def ui_command_grant(self, role: str, object: str, propagate: str = "true") -> None:
        """
        Gives this user ROLE (operator or viewer) on one OBJECT: /units/UNIT,
        /units/UNIT/disks/DISK, /units/UNIT/disks/DISK/DEVICE, /volumes/ID or /hosts/HOST.
        PROPAGATE=false limits it to the object itself, not what is under it. Takes effect at
        the user's next call. Example: a viewer who may run one unit:
        /users/vera grant operator /units/unit-a
        """
        self.root.grant(self.name, role, object, propagate)

    def ui_complete_grant(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        return self.root.complete_grant(parameters, text, current_param)

    def ui_command_grants(self) -> None:
        """Lists this user's grants (id, role, object), as `ungrant` takes them."""
        rows = self.api.get("/grants", user=self.name)
        self.out.emit(rows, lambda: "\n".join(
            f"{g['id']:>5}  {g['role']} on {g['object']}{'' if g['propagate'] else ' (itself only)'}"
            f"  by {g['created_by']}" for g in rows) or f"{self.name} has no grants")

    def ui_command_ungrant(self, grant: str) -> None:
        """Takes back one of this user's grants: GRANT is its id (`grants` lists them)."""
        gid = number_arg(grant, "grant")
        if not any(g["id"] == gid for g in self.api.get("/grants", user=self.name)):
            raise Refused(404, f"{self.name} has no grant {gid} (`grants` lists them)")
        g = self.api.call("DELETE", f"/grants/{gid}")
        self.out.emit(g, f"grant {gid} taken back: {g['user_name']} is no longer {g['role']} on {g['object']}")


class UsersNode(Collection):
    child_type = UserNode
    noun = ("user", "users")
    description = "people (admins only)"
    route = "/users"
    key_field = "name"

    def ui_command_create(self, name: str, role: str, password_file: str | None = None) -> None:
        """
        Creates a user: NAME (lower-case letters, digits, '-', '.'), ROLE admin, operator or
        viewer. The password (12 characters or more) is asked twice on the terminal, or read
        from PASSWORD_FILE (first line; the file must be mode 0600). Never on the command line.

        Example: /users create vera viewer
        """
        if role not in ROLES:
            raise UsageError(f"role={role!r}: one of {', '.join(ROLES)}")
        password = read_password(password_file, confirm=True)
        u = self.api.call("POST", "/users", json={"name": name, "role": role, "password": password})
        self.forget()
        self.out.emit(u, f"user {u['name']} created ({u['role']})")

    def ui_complete_create(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        return complete(ROLES, text) if current_param == "role" else []

    def ui_command_grant(self, user: str, role: str, object: str, propagate: str = "true") -> None:
        """
        Gives USER a ROLE (operator or viewer) on one OBJECT and what is under it (unless
        PROPAGATE=false): /units/UNIT, /units/UNIT/disks/DISK, /units/UNIT/disks/DISK/DEVICE,
        /volumes/ID or /hosts/HOST. Example: /users grant vera operator /units/unit-a
        """
        self.root.grant(user, role, object, propagate)

    def ui_complete_grant(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "user":
            return complete([c.name for c in self.children], text)
        return self.root.complete_grant(parameters, text, current_param)


def read_password(password_file: str | None, confirm: bool = False) -> str:
    """A password from a 0600 file's first line, or asked on the terminal (twice to confirm)."""
    if password_file:
        try:
            lines = read_secret_file(Path(password_file).expanduser()).splitlines()
        except InvalidInput as e:
            raise UsageError(str(e).replace("key file", "password file")) from None
        if not lines or not lines[0]:
            raise UsageError(f"password file {password_file} is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password on: give password_file=PATH (mode 0600)")
    pw = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != pw:
        raise UsageError("the two passwords differ: nothing was changed")
    if not pw:
        raise UsageError("an empty password: nothing was changed")
    return pw


# -- audit ---------------------------------------------------------------------------------------

class AuditEntryNode(Item):
    @staticmethod
    def summarize(data: dict[str, Any]) -> str:
        return render.audit_summary(data)


class AuditNode(Collection):
    child_type = AuditEntryNode
    noun = ("entry", "entries")
    numeric = True
    newest_first = True
    description = "who did what (admins only)"
    route = "/audit"
    limit = 50

    def ui_command_show(self, limit: str = "20", principal: str | None = None,
                        action: str | None = None, outcome: str | None = None) -> None:
        """
        Shows the audit log, newest first: LIMIT entries (20 if left out), filtered by
        PRINCIPAL (e.g. user:alice, host:host-b), ACTION (e.g. "POST /api/v1/assignments") and
        OUTCOME (the HTTP status, e.g. 403 for every refusal).

        Example: /audit show outcome=403
        """
        rows = self.api.get("/audit", limit=number_arg(limit, "limit"), principal=principal,
                            action=action, outcome=number_arg(outcome, "outcome") if outcome else None)
        self.out.emit(rows, lambda: "\n".join(
            f"{e['id']:>6}  {render.audit_summary(e)}  {e['object']}"
            f"{'  ' + e['detail'] if e.get('detail') else ''}" for e in rows) or "no such entries")


# -- the root ------------------------------------------------------------------------------------

class Root(Node):
    """The top of the tree; holds the station client (made at the first call) and the output."""

    description = "dvsan station"

    def __init__(self, shell: Any, connect: Callable[[], Client], output: Output,
                 task_timeout: float | None = None,
                 about: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__("/", None, shell)
        self._connect = connect
        self._about = about
        self._client: Client | None = None
        self.output = output
        self.task_timeout = task_timeout
        self.missing_routes: set[str] = set()
        self._order = [UnitsNode("units", self), VolumesNode("volumes", self), HostsNode("hosts", self),
                       TasksNode("tasks", self), UsersNode("users", self), AuditNode("audit", self)]

    def list_children(self) -> list[Node]:
        return list(self._order)                 # the order of the help text, not alphabetical

    def ui_command_info(self) -> None:
        """
        Shows which station this shell talks to, as whom, until when its token is valid, and
        the station's version (asked afresh: it also tells whether the station answers).
        """
        data = {**(self._about() if self._about else {}), **self.client().health()}
        self.out.emit(data, lambda: render.info(data))

    def one_volume(self, volume_id: int) -> Any:
        """GET /api/v1/volumes/ID, or UNSUPPORTED (asked once) on a station without that route."""
        if "volume" in self.missing_routes:
            return Collection.UNSUPPORTED
        one = _missing(self.client(), "GET", f"/volumes/{volume_id}")
        if one is Collection.UNSUPPORTED:
            self.missing_routes.add("volume")
        return one

    def client(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def task_deadline(self) -> float | None:
        return None if self.task_timeout is None else time.monotonic() + self.task_timeout

    # shared by the nodes that assign, release and grant

    def assign(self, at: Node, host: str, *, size: str | None = None, volume_id: int | None = None,
               initiator: str | None = None, address: str | None = None,
               mutual_chap: bool = False) -> dict[str, Any]:
        api = self.client()
        if initiator is None:
            hosts = {h["name"]: h for h in api.get("/hosts")}
            if host not in hosts:
                raise UsageError(f"host {host!r} is not enrolled (`ls /hosts`): enrol it with "
                                 f"`/hosts enroll {host} IQN`, or give initiator=IQN")
            iqns = hosts[host]["initiator_iqns"]
            if len(iqns) != 1:
                raise UsageError(f"host {host} has {len(iqns)} initiator names: give "
                                 f"initiator=IQN, one of {', '.join(iqns)}")
            initiator = iqns[0]
        if address is None:
            held = api.get("/assignments", host=host)
            if not held:
                raise UsageError(f"give address=IP: host {host}'s address on the storage network "
                                 "(it holds no storage yet to take it from)")
            address = held[0]["host_address"]
        body: dict[str, Any] = {"host": host, "initiator_iqn": initiator, "host_address": address}
        if size is not None:
            body["size"] = size
        if volume_id is not None:
            body["volume_id"] = volume_id
        if mutual_chap:
            body["mutual_chap"] = True
        task = api.call("POST", "/assignments", json=body)
        what = f"volume {volume_id}" if volume_id is not None else size
        at.out.note(f"assigning {what} to {host}: task {task['id']}")
        done = at.follow(task)
        a = api.call("GET", f"/assignments/{done['result']['assignment']}")
        self.invalidate("/volumes", f"/hosts/{host}/assignments", "/tasks")
        at.out.emit(a, f"assigned volume {a['volume_id']} ({a['unit']} {a['device']}, "
                       f"{render.size(a['size_bytes'])}) to {host} as assignment {a['id']}: "
                       f"{a['target_iqn']} at {a['unit_address']}:{a['portal_port']}, "
                       f"export {a['export_state']}")
        return a  # type: ignore[no-any-return]

    def release(self, at: Node, assignment_id: int) -> dict[str, Any]:
        api = self.client()
        task = api.call("DELETE", f"/assignments/{assignment_id}")
        at.out.note(f"releasing assignment {assignment_id}: task {task['id']}")
        done = at.follow(task)
        r = done["result"]
        self.invalidate("/volumes", "/tasks")
        for hosts in self.children:
            if isinstance(hosts, HostsNode) and hosts.loaded:
                for h in hosts.children:
                    h.invalidate("assignments")
        wipe = (f"; the unit is zeroing it (task {r['wipe_task']}: `/tasks/{r['wipe_task']} wait`)"
                if r.get("wipe_task") else f"; wipe {r.get('wipe_state')}")
        confirmed = "" if r.get("unit_confirmed") else f" (the unit has not confirmed: {r.get('detail')})"
        at.out.emit(r, f"released assignment {assignment_id}: volume {r['volume_id']} on "
                       f"{r['unit']}{confirmed}{wipe}")
        return r  # type: ignore[no-any-return]

    def grant(self, user: str, role: str, obj: str, propagate: str) -> None:
        if role not in GRANT_ROLES:
            raise UsageError(f"role={role!r}: a grant gives operator or viewer")
        g = self.client().call("POST", "/grants", json={
            "user": user, "role": role, "object": obj, "propagate": flag(propagate, "propagate", True)})
        self.output.emit(g, f"grant {g['id']}: {g['user_name']} is {g['role']} on {g['object']}"
                            f"{' and under it' if g['propagate'] else ''}")

    def complete_assign(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "host":
            return complete([c.name for c in self.get_child("hosts").children], text)
        if current_param == "initiator" and parameters.get("host"):
            hosts = self.get_child("hosts")
            for h in hosts.children:
                if h.name == parameters["host"]:
                    return complete(h.data.get("initiator_iqns", []), text)  # type: ignore[attr-defined]
            return []
        if current_param == "size":
            return complete(["1GiB", "10GiB", "100GiB", "1TiB"], text)
        if current_param == "volume":
            vols = self.get_child("volumes")
            assert isinstance(vols, Collection)
            return complete([n for n, d in vols.listing() if VolumeNode.summarize(d).endswith("free")], text)
        if current_param == "mutual_chap":
            return complete(["true", "false"], text)
        return []

    def complete_grant(self, parameters: dict[str, str], text: str, current_param: str) -> list[str]:
        if current_param == "role":
            return complete(GRANT_ROLES, text)
        if current_param == "propagate":
            return complete(["true", "false"], text)
        if current_param == "object":
            top, _, rest = text.lstrip("/").partition("/")
            if not _ or top not in ("units", "volumes", "hosts") or "/" in rest:
                return complete(["/units/", "/volumes/", "/hosts/"], text)
            return complete([f"/{top}/{c.name}" for c in self.get_child(top).children], text)
        return []
