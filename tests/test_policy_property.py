"""Property: `check` (compiled RBAC protos, evaluated) agrees with the policy semantics
evaluated directly on the model, for random rule sets and random requests.

The reference below is written from the documented semantics only: deny wins,
default deny needs an allow, audit rules never decide, deny rules fold case
on methods and paths, globs match segment by segment (not via a regex).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.model import Mesh, PathMatch, Policy, Service, World
from meshgate.policy.check import check
from meshgate.policy.paths import normalize_request_path

# Small alphabets, so random rules and random requests often meet.
SERVICES = ("a", "b")
SEGMENTS = ("p", "q", "x.json")  # rules use these; requests also send case variants
METHODS = ("GET", "POST", "DELETE")
HEADERS = (("x-t", "1"), ("x-t", "2"), ("x-u", "1"))


def glob_match(glob: str, path: str) -> bool:
    """Segment-wise glob: '*' one non-empty segment or part of one, '**' any segments."""
    g = glob.split("/")[1:]
    p = path.split("/")[1:]

    def seg_ok(pattern: str, seg: str) -> bool:
        if pattern == "*":
            return seg != ""
        parts = pattern.split("*")
        if len(parts) == 1:
            return pattern == seg
        if not (seg.startswith(parts[0]) and seg.endswith(parts[-1])) or len(seg) < len(parts[0]) + len(parts[-1]):
            return False
        pos = len(parts[0])
        for mid in parts[1:-1]:
            found = seg.find(mid, pos, len(seg) - len(parts[-1]))
            if found < 0:
                return False
            pos = found + len(mid)
        return True

    def match(i: int, j: int) -> bool:
        if i == len(g):
            return j == len(p)
        if g[i] == "**":
            if i == len(g) - 1:
                return j < len(p)  # trailing '**': anything below, needs the '/'
            # in the middle: zero or more non-empty segments
            return any(
                match(i + 1, k) and all(seg != "" for seg in p[j:k]) for k in range(j, len(p) + 1)
            )
        return j < len(p) and seg_ok(g[i], p[j]) and match(i + 1, j + 1)

    return match(0, 0)


def path_ok(pm: PathMatch, path: str, fold: bool) -> bool:
    value, subject = (pm.value.lower(), path.lower()) if fold else (pm.value, path)
    if pm.kind == "exact":
        return subject == value
    if pm.kind == "prefix":
        return subject.startswith(value)
    return glob_match(value, subject)


def matches(p: Policy, caller: str, method: str, path: str, headers: dict[str, str]) -> bool:
    fold = p.action == "deny"
    if not (caller in p.sources or "*" in p.sources):
        return False
    if p.methods and not any((m.lower() == method.lower()) if fold else m == method for m in p.methods):
        return False
    if p.paths and not any(path_ok(pm, path, fold) for pm in p.paths):
        return False
    return all(headers.get(k) == v for k, v in p.headers)


def reference(world: World, caller: str, target: str, method: str, path: str,
              headers: dict[str, str]) -> tuple[bool, str | None]:
    rules = [p for p in world.policies if p.target == target and p.mode == "enforce"]
    norm = normalize_request_path(path).path
    assert norm is not None
    denies = sorted(p.id for p in rules if p.action == "deny" and matches(p, caller, method, norm, headers))
    if denies:
        return False, denies[0]
    if world.mesh.default_action == "allow":
        return True, None
    allows = sorted(p.id for p in rules if p.action == "allow" and matches(p, caller, method, norm, headers))
    return (True, allows[0]) if allows else (False, None)


path_values = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
glob_values = st.lists(
    st.sampled_from(SEGMENTS + ("*", "**", "**", "*.json", "p*")), min_size=1, max_size=4
).map(lambda s: "/" + "/".join(s)).filter(lambda g: "*" in g)
path_matches = st.one_of(
    st.builds(PathMatch, st.just("exact"), path_values),
    st.builds(PathMatch, st.just("prefix"), path_values),
    st.builds(PathMatch, st.just("glob"), glob_values),
)


@st.composite
def policies(draw: st.DrawFn, index: int) -> Policy:
    sources = draw(st.one_of(st.just(("*",)), st.lists(st.sampled_from(SERVICES), min_size=1, max_size=2, unique=True).map(tuple)))
    headers = draw(st.one_of(st.just(()), st.sampled_from(HEADERS).map(lambda h: (h,))))
    return Policy(
        id=f"r{draw(st.integers(0, 99)):02d}-{index}",
        action=draw(st.sampled_from(("allow", "deny"))),
        sources=sources,
        target=draw(st.sampled_from(SERVICES)),
        methods=draw(st.one_of(st.just(()), st.lists(st.sampled_from(METHODS), min_size=1, max_size=2, unique=True).map(tuple))),
        paths=draw(st.lists(path_matches, min_size=1, max_size=2).map(tuple) | st.just(())),
        headers=headers,
        mode=draw(st.sampled_from(("enforce", "enforce", "enforce", "audit"))),
    )


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(0, 5))
    return World(
        revision=1,
        mesh=Mesh("example.org", default_action=draw(st.sampled_from(("deny", "allow")))),
        services={s: Service(s) for s in SERVICES},
        policies=tuple(draw(policies(i)) for i in range(n)),
    )


request_paths = st.lists(
    st.sampled_from(SEGMENTS + ("P", "X.JSON", "", ".", "..", "%70", "..;")), max_size=4
).map(lambda s: "/" + "/".join(s))
requests = st.tuples(
    st.sampled_from(SERVICES),
    st.sampled_from(SERVICES),
    st.sampled_from(METHODS),
    request_paths,
    st.dictionaries(st.sampled_from(("x-t", "x-u")), st.sampled_from(("1", "2")), max_size=2),
)


@st.composite
def aimed_request(draw: st.DrawFn, world: World) -> tuple[str, str, str, str, dict[str, str]]:
    """A request built from one of the world's rules, then bent (case, dot segments, slashes)."""
    if not world.policies:
        return draw(requests)
    p = draw(st.sampled_from(world.policies))
    caller = draw(st.sampled_from(SERVICES)) if "*" in p.sources else draw(st.sampled_from(p.sources))
    method = draw(st.sampled_from(p.methods or METHODS))
    if p.paths:
        pm = draw(st.sampled_from(p.paths))
        path = pm.value.replace("**", draw(st.sampled_from(("p", "p/q", "")))).replace("*", draw(st.sampled_from(("p", "x", ""))))
        path = path.replace("//", "/") or "/"
        if pm.kind == "prefix":
            path += draw(st.sampled_from(("", "q", "/q")))
    else:
        path = draw(request_paths)
    bend = draw(st.sampled_from(("none", "upper", "upper", "dots", "slashes", "prefix-dots")))
    if bend == "upper":
        path = path.upper()
    elif bend == "dots":
        path = path.replace("/", "/./", 1)
    elif bend == "slashes":
        path = "/" + path
    elif bend == "prefix-dots":
        path = "/q/.." + path
    headers = dict(p.headers) if draw(st.booleans()) else draw(requests)[4]
    return caller, p.target, method, path, headers


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), data=st.data())
def test_check_agrees_with_direct_evaluation(world: World, data: st.DataObject) -> None:
    aimed = aimed_request(world)
    calls = data.draw(st.lists(st.one_of(requests, aimed, aimed, aimed), min_size=5, max_size=30))
    for caller, target, method, path, headers in calls:
        d = check(world, caller, target, method, path, headers)
        expected = reference(world, caller, target, method, path, headers)
        assert (d.allowed, d.rule_id) == expected, (caller, target, method, path, headers, d)
