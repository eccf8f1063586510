"""The collectives of a compiled program (its optimized HLO text) and a step-time estimate from
them: compute at the chip's peak, memory traffic at HBM bandwidth (hbm_bytes), and each
collective timed at the interconnect it crosses (ICI inside a slice; DCN across slices, where
XLA:TPU sends it to its data-center network runtime), overlapped or not as XLA scheduled it.
Used by bigjax/aot.py; an estimate, never a measurement. Loops count at their trip counts.

Cost models (ring algorithms, `n` devices in a group, `B` the larger of a device's input and
output bytes): all-gather, reduce-scatter and all-to-all (n-1)/n * B / bw, all-reduce twice
that, collective-permute B / bw. Overlap rule: a collective runs beside compute when XLA
scheduled compute (a fusion, dot, convolution or custom-call) while it is in flight — between
its *-start and *-done, or between the async-start and async-done around it — or fused it with
compute (XLA:TPU's async collective fusions: the collective inside a fusion that also
multiplies); every other collective stops the chip for its whole time.
"""

import dataclasses
import math
import re

import numpy as np

COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
COMPUTE = ('fusion', 'dot', 'convolution', 'custom-call')
# Instructions that move no bytes through HBM of their own (their callees, or nothing).
NO_TRAFFIC = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'while', 'call',
              'conditional', 'after-all', 'partition-id', 'replica-id', 'opt-barrier',
              'async-start', 'async-update', 'async-done', 'copy-start', 'copy-done',
              'add-dependency', 'iota')
DTYPE_BYTES = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1,
               'f8e4m3b11fnuz': 1, 'f8e4m3fnuz': 1, 'f8e5m2fnuz': 1, 's16': 2, 'u16': 2,
               'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
               'f64': 8, 'c64': 8, 'c128': 16, 'token': 0}
_SHAPE = re.compile(r'\b([a-z]+[0-9a-z]*)\[([0-9,]*)\](\{[^}]*\})?')
_HEADER = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_NAME = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*')


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    result: str  # the result's type text
    operands: str  # the operand list's text
    attributes: str


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of the program, as one device runs it."""

    op: str  # COLLECTIVES
    bytes: int  # the larger of the device's input and output
    group_size: int
    axes: tuple  # the mesh axes its groups span
    crosses_slices: bool  # a group holds devices of several slices (DCN)
    overlapped: bool  # the overlap rule of the module docstring
    count: int  # executions per step (loop trip counts)

    def seconds(self, bytes_per_s: float) -> float:
        """One execution at `bytes_per_s` per device, by the ring cost models."""
        n = self.group_size
        if n <= 1:
            return 0.0
        factor = {'all-reduce': 2 * (n - 1) / n, 'collective-permute': 1.0}.get(
            self.op, (n - 1) / n)
        return factor * self.bytes / bytes_per_s


def parse_module(text: str) -> tuple[dict, str]:
    """({computation name: [Instruction, ...] in schedule order}, entry name) of HLO text."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header and not line.startswith(('HloModule', ' ')):
                current = header[2]
                computations[current] = []
                entry = current if header[1] else entry
            continue
        if line.strip() == '}':
            computations[current] = _typed(computations[current])
            current = None
            continue
        instruction = _instruction(line)
        if instruction is not None:
            computations[current].append(instruction)
    return computations, entry


def _typed(instructions: list) -> list:
    """The instructions with each operand's type written before its name, as older XLA printed
    them (newer prints names alone)."""
    types = {i.name: i.result for i in instructions}
    def typed(item):
        name = item.split()[-1].lstrip('%')
        return item if '[' in item or name not in types else f'{types[name]} %{name}'
    return [dataclasses.replace(i, operands=', '.join(typed(o) for o in _split(i.operands)))
            for i in instructions]


def collectives(text: str, mesh) -> list[Collective]:
    """The collectives of a compiled program for `mesh` (jax.sharding.Mesh), with their bytes,
    the mesh axes they run over and how often each runs per step."""
    computations, entry = parse_module(text)
    counts = call_counts(computations, entry)
    slices = np.vectorize(_slice_of, otypes=[int])(mesh.devices)
    wrapped = {}  # computation -> whether compute runs beside the collectives in it
    for instructions in computations.values():
        for position, i in enumerate(instructions):
            if i.opcode == 'async-start':
                overlapped = _overlapped(instructions, position)
                wrapped.update((callee, overlapped) for callee in _callees(i))
            elif i.opcode == 'fusion':  # XLA:TPU's async collective fusions
                wrapped.update((callee, any(inner.opcode in COMPUTE for inner in
                                            computations.get(callee, [])))
                               for callee in _callees(i))
    found = []
    for name, instructions in computations.items():
        count = counts.get(name, 0)
        for position, i in enumerate(instructions):
            if not count:
                break
            if i.opcode in COLLECTIVES:
                found.append(_collective(i.opcode, i, i.result, wrapped.get(name, False), count,
                                         mesh, slices))
            elif i.opcode == 'send' and '_xla_megascale_transfer_type' in i.attributes:
                found.append(_across_slices(i, _overlapped(instructions, position), count,
                                            mesh, slices))
            elif i.opcode.endswith('-start') and i.opcode.removesuffix('-start') in COLLECTIVES:
                done = _done_of(instructions, position)
                found.append(_collective(i.opcode.removesuffix('-start'), i,
                                         done.result if done else i.result,
                                         _overlapped(instructions, position), count, mesh,
                                         slices))
    return found


def call_counts(computations: dict, entry: str) -> dict:
    """How many times each computation runs per execution of `entry`: a while loop's body and
    condition run its trip count times (XLA's known_trip_count, else the constant its condition
    compares with), everything else once per call of its caller."""
    edges = {name: [(callee, _trip_count(i, computations) if i.opcode == 'while' else 1)
                    for i in instructions for callee in _callees(i) if callee in computations]
             for name, instructions in computations.items()}
    finished, stack, seen = [], [(entry, False)], set()
    while stack:  # depth-first post-order: a computation after everything it calls
        name, done = stack.pop()
        if done:
            finished.append(name)
        elif name not in seen:
            seen.add(name)
            stack.append((name, True))
            stack.extend((callee, False) for callee, _ in edges[name])
    counts = dict.fromkeys(finished, 0)
    counts[entry] = 1
    for name in reversed(finished):  # callers before callees
        for callee, times in edges[name]:
            counts[callee] += counts[name] * times
    return counts


def hbm_bytes(text: str) -> float:
    """Bytes a step moves through HBM: every operand and result of each instruction that runs
    outside a fusion (a fusion reads its inputs from and writes its output to memory), at its
    computation's count; collectives are timed separately."""
    computations, entry = parse_module(text)
    counts = call_counts(computations, entry)
    fused = {callee for instructions in computations.values() for i in instructions
             if i.opcode in ('fusion', 'all-reduce', 'reduce-scatter', 'reduce', 'map', 'sort',
                             'scatter', 'select-and-scatter', 'reduce-window', 'all-reduce-start',
                             'custom-call')
             for callee in _callees(i)}
    total = 0.0
    for name, instructions in computations.items():
        if name in fused or not counts.get(name):
            continue
        for i in instructions:
            base = i.opcode.removesuffix('-start').removesuffix('-done')
            if i.opcode in NO_TRAFFIC or base in COLLECTIVES:
                continue
            total += counts[name] * _traffic(i, computations)
    return total


def _traffic(i: Instruction, computations: dict) -> float:
    """HBM bytes of one instruction: its operands read and its result written, except that a
    dynamic slice reads only the slice and a dynamic update writes only the update, in place
    (inside a fusion too): a scanned layer stack is not read whole for each layer."""
    operands = [type_bytes(o, hbm_only=True) for o in _split(i.operands)]
    if i.opcode == 'dynamic-slice':
        return 2 * type_bytes(i.result, hbm_only=True)
    if i.opcode == 'dynamic-update-slice':
        return 2 * operands[1]
    body = computations.get(next(iter(_callees(i)), ''), []) if i.opcode == 'fusion' else []
    if not body:
        return type_bytes(i.result, hbm_only=True) + sum(operands)
    producers = {inner.name: inner for inner in body}
    read = 0.0
    for inner in body:
        if inner.opcode != 'parameter' or not inner.operands.strip().isdigit():
            continue
        k = int(inner.operands)
        users = [u for u in body if inner.name in _operand_names(u)]
        if users and all(u.opcode == 'dynamic-slice' for u in users):
            read += sum(type_bytes(u.result, hbm_only=True) for u in users)
        elif not (users and all(u.opcode == 'dynamic-update-slice'
                                and _operand_names(u)[0] == inner.name for u in users)):
            read += operands[k] if k < len(operands) else 0.0
    root = body[-1]
    outputs = [producers.get(n) for n in _operand_names(root)] if root.opcode == 'tuple' else [
        root]
    written = sum(type_bytes(_split(o.operands)[1], hbm_only=True)
                  if o.opcode == 'dynamic-update-slice' else type_bytes(o.result, hbm_only=True)
                  for o in outputs if o is not None)
    return read + written


def _split(text: str) -> list[str]:
    """An operand list's items (commas inside brackets kept)."""
    items, depth, current = [], 0, ''
    for ch in text:
        depth += ch in '([{'
        depth -= ch in ')]}'
        if ch == ',' and depth == 0:
            items.append(current)
            current = ''
        else:
            current += ch
    return [item.strip() for item in items + [current] if item.strip()]


def _operand_names(i: Instruction) -> list[str]:
    return [item.split()[-1].lstrip('%') for item in _split(i.operands)]


def estimate(text: str, mesh, chip, flops_per_chip: float, model_flops_per_chip: float) -> dict:
    """Step-time estimate of a compiled program: max(compute, HBM, overlapped ICI, overlapped
    DCN) + the collectives that are not overlapped; MFU = model FLOPs / (step time x peak)."""
    found = collectives(text, mesh)
    memory = hbm_bytes(text)
    terms = {'compute': flops_per_chip / chip.peak_flops, 'HBM': memory / chip.memory_bytes_per_s}
    exposed = {}
    for network, bandwidth in (('ICI', chip.ici_bytes_per_s), ('DCN', chip.dcn_bytes_per_s)):
        mine = [c for c in found if c.crosses_slices == (network == 'DCN')]
        terms[network] = sum(c.count * c.seconds(bandwidth) for c in mine if c.overlapped)
        exposed[network] = sum(c.count * c.seconds(bandwidth) for c in mine if not c.overlapped)
    step = max(terms.values()) + sum(exposed.values())
    totals = {k: terms[k] + exposed.get(k, 0.0) for k in terms}
    return {
        'step_seconds': step,
        'mfu': model_flops_per_chip / (step * chip.peak_flops) if step else None,
        'dominant': max(totals, key=totals.get),
        'hbm_bytes': memory,
        'seconds': {'compute': terms['compute'], 'hbm': terms['HBM'],
                    'ici_overlapped': terms['ICI'], 'ici_exposed': exposed['ICI'],
                    'dcn_overlapped': terms['DCN'], 'dcn_exposed': exposed['DCN']},
        'collectives': summarize(found),
    }


def summarize(found: list[Collective]) -> list[dict]:
    """Collectives grouped by (op, axes, network, overlapped): executions and bytes per step."""
    groups = {}
    for c in found:
        key = (c.op, c.axes, c.crosses_slices, c.overlapped)
        g = groups.setdefault(key, {'op': c.op, 'axes': list(c.axes),
                                    'network': 'DCN' if c.crosses_slices else 'ICI',
                                    'overlapped': c.overlapped, 'executions': 0, 'bytes': 0})
        g['executions'] += c.count
        g['bytes'] += c.count * c.bytes
    return sorted(groups.values(), key=lambda g: -g['bytes'])


def type_bytes(text: str, hbm_only: bool = False) -> float:
    """Bytes of every array type named in `text` (a result type or an operand list);
    hbm_only leaves out arrays whose layout puts them in another memory space (S(n): a TPU's
    on-chip VMEM, host memory)."""
    return float(sum(DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(',') if d)
                     for dtype, dims, layout in _SHAPE.findall(text)
                     if not (hbm_only and 'S(' in layout)))


def replica_groups(attributes: str, num_devices: int) -> list[list[int]]:
    """The device groups of a collective: replica_groups={{0,1},{2,3}}, the iota form
    [groups,size]<=[dims]T(perm), the mesh form mesh['axis_0'=16,'axis_1'=2],
    device_ids=([2,16]T(1,0)) {'axis_0'} (devices laid out on a mesh, grouped along the named
    axes), or source_target_pairs (each pair a group); none = all."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\]"
                     r"(?:T\(([\d,]+)\))?\))?\s*\{([^}]*)\}", attributes)
    if mesh:
        names, sizes = zip(*[(n, int(k)) for n, k in re.findall(r"'([^']+)'=(\d+)", mesh[1])])
        dims = [int(d) for d in mesh[2].split(',')] if mesh[2] else [math.prod(sizes)]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if mesh[3]:
            ids = ids.transpose([int(p) for p in mesh[3].split(',')])
        ids = ids.reshape(sizes)
        grouped = [names.index(n) for n in re.findall(r"'([^']+)'", mesh[4])]
        rest = [k for k in range(len(sizes)) if k not in grouped]
        size = math.prod(sizes[k] for k in grouped)
        return ids.transpose(rest + grouped).reshape(-1, size).tolist()
    iota = re.search(r'replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?',
                     attributes)
    if iota:
        dims = [int(d) for d in iota[3].split(',')]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if iota[4]:
            ids = ids.transpose([int(p) for p in iota[4].split(',')])
        return ids.reshape(int(iota[1]), int(iota[2])).tolist()
    listed = re.search(r'(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}',
                       attributes)
    groups = [[int(d) for d in g.split(',') if d]
              for g in re.findall(r'\{([\d,]*)\}', listed[1])] if listed else []
    groups = [g for g in groups if g]
    return groups or [list(range(num_devices))]


def _collective(op, instruction, result, overlapped, count, mesh, slices) -> Collective:
    groups = replica_groups(instruction.attributes, mesh.devices.size)
    coords = [np.unravel_index(g, mesh.devices.shape) for g in groups]
    axes = tuple(axis for k, axis in enumerate(mesh.axis_names)
                 if any(len(set(c[k].tolist())) > 1 for c in coords))
    flat = slices.reshape(-1)
    crosses = any(len({int(flat[d]) for d in g}) > 1 for g in groups)
    size = 2 if op == 'collective-permute' else max(len(g) for g in groups)
    nbytes = max(type_bytes(instruction.operands), type_bytes(result))
    return Collective(op, int(nbytes), size, axes, crosses, overlapped, count)


def _across_slices(send: Instruction, overlapped: bool, count: int, mesh, slices) -> Collective:
    """A collective between TPU slices: XLA:TPU sends it to its data-center network runtime
    (a host-transfer send named _xla_megascale_transfer_type="ALL_REDUCE", ...), one device
    of each slice in a group, over the mesh axes that span slices."""
    kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', send.attributes)[1]
    axes = tuple(axis for k, axis in enumerate(mesh.axis_names)
                 if (np.diff(slices, axis=k) != 0).any())
    return Collective(kind.lower().replace('_', '-'), int(type_bytes(_split(send.operands)[0])),
                      len(np.unique(slices)), axes, True, overlapped, count)


def _slice_of(device) -> int:
    """The network island of a device: its TPU slice (a slice's hosts share its ICI), else its
    host (GPUs, CPUs)."""
    if device.platform == 'tpu':
        return int(getattr(device, 'slice_index', 0) or 0)
    return int(getattr(device, 'process_index', 0) or 0)


def _done_of(instructions: list, start: int):
    name = instructions[start].name
    for i in instructions[start + 1:]:
        if i.opcode.endswith('-done') and re.search(rf'(?<![\w.\-]){re.escape(name)}(?![\w.\-])',
                                                    i.operands):
            return i
    return None


def _overlapped(instructions: list, start: int) -> bool:
    """The overlap rule: compute scheduled between the start at `start` and its done."""
    done = _done_of(instructions, start)
    if done is None:
        return False
    end = instructions.index(done)
    return any(i.opcode in COMPUTE for i in instructions[start + 1:end])


def _callees(i: Instruction) -> list[str]:
    names = []
    for key in ('calls', 'to_apply', 'body', 'condition', 'true_computation',
                'false_computation'):
        names += re.findall(rf'\b{key}=%?([\w.\-]+)', i.attributes)
    for group in re.findall(r'branch_computations=\{([^}]*)\}', i.attributes):
        names += [n.strip().lstrip('%') for n in group.split(',')]
    for group in re.findall(r'\bcalls=\{([^}]*)\}', i.attributes):
        names += [n.strip().lstrip('%') for n in group.split(',')]
    return names


def _trip_count(i: Instruction, computations: dict) -> int:
    known = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', i.attributes)
    if known:
        return int(known[1])
    condition = re.search(r'\bcondition=%?([\w.\-]+)', i.attributes)
    constants = [int(c) for inner in computations.get(condition[1] if condition else '', [])
                 if inner.opcode == 'constant'
                 for c in re.findall(r'^(\d+)', inner.operands)]
    return max(constants, default=1)


def _instruction(line: str) -> Instruction | None:
    """One instruction line: name = type opcode(operands), attributes."""
    head = _NAME.match(line)
    if not head:
        return None
    rest = line[head.end():]
    if rest.startswith('('):
        end = _closing(rest, 0)
        result, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        result, _, rest = rest.partition(' ')
    opcode = re.match(r'([\w\-]+)\(', rest)
    if not opcode:
        return None
    start = opcode.end() - 1
    end = _closing(rest, start)
    return Instruction(head[1], opcode[1], result, rest[start + 1:end], rest[end + 1:])


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`, quoted strings skipped."""
    depth, quoted = 0, False
    for k in range(start, len(text)):
        ch = text[k]
        if quoted:
            quoted = ch != '"' or text[k - 1] == '\\'
        elif ch == '"':
            quoted = True
        elif ch in '({[':
            depth += 1
        elif ch in ')}]':
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1
