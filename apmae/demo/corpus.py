"""A deterministic generator of realistic Java source files for the embedded demo.

Each file is one top-level type (class, interface or enum) with a package,
imports, fields, constructors, accessors and methods whose bodies use locals,
loops, conditionals, ``switch``, ``try``/``catch``, literals of every kind,
generics, annotations and comments. Names are built from small vocabularies
and every use of a field, parameter or local refers to one declared earlier in
the file, so completing an identifier is usually a copy from the context: the
skill that makes identifier scenarios learnable for a tiny model.

Types are tracked while generating, so the code is not only well-formed but
type-checks (a sample compiles with ``javac``).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

NOUNS = [
    "order", "item", "price", "count", "name", "total", "user", "account", "balance", "index",
    "value", "key", "buffer", "limit", "offset", "size", "score", "level", "rate", "amount",
    "customer", "product", "invoice", "payment", "ticket", "session", "message", "record", "entry",
    "node", "task", "job", "event", "report", "status", "label", "title", "owner", "region", "weight",
    "height", "width", "length", "depth", "step", "delay", "timeout", "budget", "quota", "token",
]
ADJECTIVES = [
    "max", "min", "current", "last", "next", "first", "total", "default", "base", "new", "old",
    "active", "pending", "local", "remote", "primary", "cached", "raw", "final", "initial",
]
VERBS = [
    "compute", "update", "find", "load", "save", "process", "check", "build", "parse", "format",
    "apply", "merge", "resolve", "collect", "count", "validate", "render", "reset", "handle", "scan",
]
DOMAINS = ["shop", "bank", "chat", "games", "school", "travel", "health", "media", "sensors", "billing"]
COMPANIES = ["acme", "example", "demo", "sample", "corp"]
CLASS_SUFFIXES = ["Service", "Manager", "Repository", "Handler", "Processor", "Controller", "Helper",
                  "Registry", "Tracker", "Builder"]
WORDS = ["hello", "error", "ready", "done", "unknown", "empty", "none", "ok", "failed", "retry", "total",
         "invalid input", "not found", "value: ", "count=", "skip", "default", "active", "closed", "open"]
EXCEPTIONS = ["IllegalArgumentException", "IllegalStateException", "NumberFormatException",
              "ArithmeticException", "IndexOutOfBoundsException"]

SCALARS = ["int", "long", "double", "boolean", "String", "char"]
COLLECTIONS = ["List<String>", "List<Integer>", "Map<String, Integer>", "Set<String>"]
IMPORTS = {
    "List": ["java.util.List", "java.util.ArrayList"],
    "Map": ["java.util.Map", "java.util.HashMap"],
    "Set": ["java.util.Set", "java.util.HashSet"],
}
NEW_COLLECTION = {"List": "ArrayList", "Map": "HashMap", "Set": "HashSet"}


def camel(*parts: str) -> str:
    """``camel("max", "price") == "maxPrice"``."""
    head, *rest = parts
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def pascal(*parts: str) -> str:
    """``pascal("order", "service") == "OrderService"``."""
    return "".join(p[:1].upper() + p[1:] for p in parts)


@dataclass
class Scope:
    """Variables visible at one point: name -> Java type, in declaration order."""

    names: dict[str, str] = field(default_factory=dict)

    def child(self) -> "Scope":
        return Scope(dict(self.names))

    def of_type(self, java_type: str) -> list[str]:
        return [n for n, t in self.names.items() if t == java_type]


@dataclass
class Method:
    """Signature of a generated method (bodies may call earlier methods)."""

    name: str
    returns: str  # Java type or "void"
    params: list[tuple[str, str]]  # (type, name)
    static: bool = False


class JavaFileWriter:
    """Writes one Java source file from a seeded random generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lines: list[str] = []
        self.fields = Scope()
        self.methods: list[Method] = []
        self.used_names: set[str] = set()
        self.type_name = ""

    # ---- output -------------------------------------------------------
    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text if text else "")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    # ---- names and literals ------------------------------------------
    def fresh_name(self, scope: Scope) -> str:
        """A camelCase name not yet declared in ``scope`` nor used as a method."""
        for _ in range(100):
            noun = self.rng.choice(NOUNS)
            name = noun if self.rng.random() < 0.35 else camel(self.rng.choice(ADJECTIVES), noun)
            if name not in scope.names and name not in self.used_names:
                self.used_names.add(name)
                return name
        name = f"value{len(self.used_names)}"
        self.used_names.add(name)
        return name

    def literal(self, java_type: str) -> str:
        r = self.rng
        if java_type == "int":
            return r.choice([str(r.randint(0, 9)), str(r.randint(10, 1000)), "0x" + format(r.randint(16, 255), "X")])
        if java_type == "long":
            return r.choice([f"{r.randint(0, 100000)}L", f"{r.randint(1, 9)}_000_000L"])
        if java_type == "double":
            return r.choice([f"{r.randint(0, 99)}.{r.randint(0, 9)}", f"{r.randint(1, 9)}.{r.randint(0, 99)}e{r.randint(1, 3)}"])
        if java_type == "boolean":
            return r.choice(["true", "false"])
        if java_type == "char":
            return "'" + r.choice("abcdxyz_-#.:") + "'"
        if java_type == "String":
            return '"' + r.choice(WORDS) + '"'
        raw = java_type.split("<")[0]
        return f"new {NEW_COLLECTION[raw]}<>()"

    # ---- expressions --------------------------------------------------
    def var(self, scope: Scope, java_type: str) -> str | None:
        names = scope.of_type(java_type)
        return self.rng.choice(names) if names else None

    def expr(self, scope: Scope, java_type: str, depth: int = 0) -> str:
        """An expression of ``java_type`` built from visible names, calls and literals."""
        r = self.rng
        v = self.var(scope, java_type)
        if depth < 2 and r.random() < 0.45:
            composite = self.composite(scope, java_type, depth + 1)
            if composite:
                return composite
        if v is not None and r.random() < 0.9:
            return v
        return self.literal(java_type)

    def composite(self, scope: Scope, java_type: str, depth: int) -> str | None:
        """A binary operation, method call or collection query producing ``java_type``."""
        r = self.rng
        options: list[str] = []
        call = self.call_returning(scope, java_type, depth)
        if call:
            options.append(call)
        if java_type in ("int", "long", "double"):
            op = r.choice(["+", "-", "*", "+", "-"] + (["/", "%"] if java_type != "double" else ["/"]))
            divisor = {"int": str(r.randint(1, 9)), "long": f"{r.randint(1, 9)}L", "double": "2.0"}[java_type]
            right = divisor if op in "/%" else self.expr(scope, java_type, depth)
            options.append(f"{self.expr(scope, java_type, depth)} {op} {right}")
        if java_type == "int":
            options += [f"{s}.length()" for s in scope.of_type("String")]
            options += [f"{c}.size()" for c in scope.names if scope.names[c] in COLLECTIONS]
        if java_type == "boolean":
            options.append(self.condition(scope, depth))
        if java_type == "String":
            options += [f"{s}.trim()" for s in scope.of_type("String")]
            options.append(f"String.valueOf({self.expr(scope, r.choice(['int', 'long', 'double']), depth)})")
            right = self.expr(scope, r.choice(SCALARS), depth)
            # parentheses keep `"a" + x - y` from parsing as `("a" + x) - y`
            options.append(f"{self.expr(scope, 'String', depth)} + {f'({right})' if ' ' in right else right}")
        if java_type == "char":
            options += [f"({s}.isEmpty() ? {self.literal('char')} : {s}.charAt(0))" for s in scope.of_type("String")]
        return r.choice(options) if options else None

    def call_returning(self, scope: Scope, java_type: str, depth: int) -> str | None:
        candidates = [m for m in self.methods if m.returns == java_type]
        if not candidates or depth > 1:
            return None
        m = self.rng.choice(candidates)
        args = ", ".join(self.expr(scope, t, depth + 1) for t, _ in m.params)
        return f"{m.name}({args})"

    def condition(self, scope: Scope, depth: int = 0) -> str:
        """A boolean expression: comparison, string/collection query or flag combination."""
        r = self.rng
        kind = r.random()
        numeric = [t for t in ("int", "long", "double") if scope.of_type(t)]
        if kind < 0.45 and numeric:
            t = r.choice(numeric)
            op = r.choice(["<", ">", "<=", ">=", "==", "!="])
            return f"{self.var(scope, t)} {op} {self.literal(t)}"
        if kind < 0.6 and scope.of_type("String"):
            s = self.var(scope, "String")
            return r.choice([f"{s}.isEmpty()", f"!{s}.isEmpty()", f'{s}.equals("{r.choice(WORDS)}")',
                             f'{s}.startsWith("{r.choice(WORDS)[:2]}")'])
        colls = [c for c in scope.names if scope.names[c] in ("List<String>", "Set<String>")]
        if kind < 0.75 and colls and scope.of_type("String"):
            return f"{r.choice(colls)}.contains({self.var(scope, 'String')})"
        flags = scope.of_type("boolean")
        if flags:
            a = r.choice(flags)
            if len(flags) > 1 and r.random() < 0.5:
                return f"{a} {r.choice(['&&', '||'])} {r.choice(flags)}"
            return r.choice([a, f"!{a}"])
        return self.literal("boolean")

    # ---- statements ---------------------------------------------------
    def block(self, scope: Scope, depth: int, budget: int, returns: str = "void") -> None:
        """``budget`` statements at indentation ``depth``; locals stay inside ``scope``."""
        for _ in range(budget):
            kind = self.rng.random()
            nested = depth < 4 and budget > 1
            if kind < 0.24 or not scope.names:
                self.local_declaration(scope, depth)
            elif kind < 0.45:
                self.assignment(scope, depth)
            elif kind < 0.55:
                self.call_statement(scope, depth)
            elif kind < 0.68 and nested:
                self.if_statement(scope, depth, budget)
            elif kind < 0.78 and nested:
                self.loop(scope, depth, budget)
            elif kind < 0.84 and nested:
                self.switch_statement(scope, depth)
            elif kind < 0.89 and nested:
                self.try_statement(scope, depth, budget)
            elif kind < 0.91:
                self.emit(depth, f"// {self.rng.choice(VERBS)} the {self.rng.choice(NOUNS)} before use")
            else:
                self.assignment(scope, depth)

    def local_declaration(self, scope: Scope, depth: int) -> None:
        java_type = self.rng.choice(SCALARS * 3 + COLLECTIONS)
        value = self.literal(java_type) if java_type in COLLECTIONS else self.expr(scope, java_type)
        name = self.fresh_name(scope)
        self.emit(depth, f"{java_type} {name} = {value};")
        scope.names[name] = java_type

    def assignment(self, scope: Scope, depth: int) -> None:
        targets = [n for n, t in scope.names.items() if t in SCALARS]
        if not targets:
            return self.local_declaration(scope, depth)
        name = self.rng.choice(targets)
        java_type = scope.names[name]
        if java_type in ("int", "long", "double") and self.rng.random() < 0.5:
            op = self.rng.choice(["+=", "-=", "*="])
            self.emit(depth, f"{name} {op} {self.expr(scope, java_type)};")
        elif java_type in ("int", "long") and self.rng.random() < 0.3:
            self.emit(depth, f"{name}{self.rng.choice(['++', '--'])};")
        else:
            value = self.expr(scope, java_type)
            self.emit(depth, f"{name} = {self.literal(java_type) if value == name else value};")

    def call_statement(self, scope: Scope, depth: int) -> None:
        r = self.rng
        colls = [(n, t) for n, t in scope.names.items() if t in COLLECTIONS]
        if colls and r.random() < 0.6:
            name, t = r.choice(colls)
            if t.startswith("Map"):
                self.emit(depth, f"{name}.put({self.expr(scope, 'String')}, {self.expr(scope, 'int')});")
            else:
                elem = "Integer" if "Integer" in t else "String"
                self.emit(depth, f"{name}.add({self.expr(scope, 'int' if elem == 'Integer' else 'String')});")
            return
        voids = [m for m in self.methods if m.returns == "void"]
        if voids and r.random() < 0.5:
            m = r.choice(voids)
            self.emit(depth, f"{m.name}({', '.join(self.expr(scope, t) for t, _ in m.params)});")
            return
        self.emit(depth, f"System.out.println({self.expr(scope, r.choice(SCALARS))});")

    def if_statement(self, scope: Scope, depth: int, budget: int) -> None:
        self.emit(depth, f"if ({self.condition(scope)}) {{")
        self.block(scope.child(), depth + 1, self.rng.randint(1, max(1, budget // 2)))
        r = self.rng.random()
        if r < 0.25:
            self.emit(depth, f"}} else if ({self.condition(scope)}) {{")
            self.block(scope.child(), depth + 1, 1)
        if r < 0.6:
            self.emit(depth, "} else {")
            self.block(scope.child(), depth + 1, self.rng.randint(1, 2))
        elif r < 0.7:
            self.emit(depth + 1, f'throw new {self.rng.choice(EXCEPTIONS)}("{self.rng.choice(WORDS)}");')
        self.emit(depth, "}")

    def loop(self, scope: Scope, depth: int, budget: int) -> None:
        r = self.rng
        inner = scope.child()
        lists = [n for n, t in scope.names.items() if t in ("List<String>", "Set<String>", "List<Integer>")]
        counter = next(c for c in "ijkmn" if c not in scope.names)
        if lists and r.random() < 0.4:
            coll = r.choice(lists)
            elem = "Integer" if scope.names[coll] == "List<Integer>" else "String"
            item = self.fresh_name(scope)
            self.emit(depth, f"for ({elem} {item} : {coll}) {{")
            inner.names[item] = "int" if elem == "Integer" else "String"
        elif r.random() < 0.75 or (cond := self.condition(scope)) in ("true", "false"):
            # a constant `while (false)` would not compile (unreachable body)
            bound = self.expr(scope, "int", 1)
            self.emit(depth, f"for (int {counter} = 0; {counter} < {bound}; {counter}++) {{")
            inner.names[counter] = "int"
        else:
            self.emit(depth, f"while ({cond}) {{")
            self.block(inner, depth + 1, r.randint(1, max(1, budget // 2)))
            self.emit(depth + 1, "break;")
            self.emit(depth, "}")
            return
        self.block(inner, depth + 1, r.randint(1, max(1, budget // 2)))
        if r.random() < 0.2:
            self.emit(depth + 1, f"if ({self.condition(inner)}) {{")
            self.emit(depth + 2, r.choice(["break;", "continue;"]))
            self.emit(depth + 1, "}")
        self.emit(depth, "}")

    def switch_statement(self, scope: Scope, depth: int) -> None:
        r = self.rng
        ints, strings = scope.of_type("int"), scope.of_type("String")
        if strings and (not ints or r.random() < 0.4):
            subject, labels = r.choice(strings), [f'"{w}"' for w in r.sample(WORDS, r.randint(2, 4))]
        else:
            subject = r.choice(ints) if ints else self.literal("int")
            labels = [str(v) for v in r.sample(range(10), r.randint(2, 4))]
        self.emit(depth, f"switch ({subject}) {{")
        for label in labels + ["default"]:
            self.emit(depth + 1, "default:" if label == "default" else f"case {label}:")
            self.block(scope.child(), depth + 2, 1)
            self.emit(depth + 2, "break;")
        self.emit(depth, "}")

    def try_statement(self, scope: Scope, depth: int, budget: int) -> None:
        r = self.rng
        self.emit(depth, "try {")
        inner = scope.child()
        strings = scope.of_type("String")
        if strings and r.random() < 0.5:
            name = self.fresh_name(scope)
            self.emit(depth + 1, f"int {name} = Integer.parseInt({r.choice(strings)});")
            inner.names[name] = "int"
        self.block(inner, depth + 1, r.randint(1, max(1, budget // 2)))
        self.emit(depth, f"}} catch ({r.choice(EXCEPTIONS)} e) {{")
        self.emit(depth + 1, r.choice(["System.out.println(e.getMessage());", "e.printStackTrace();",
                                        'System.err.println("failed: " + e);']))
        if r.random() < 0.3:
            self.emit(depth, "} finally {")
            self.emit(depth + 1, f"System.out.println({self.literal('String')});")
        self.emit(depth, "}")

    # ---- members ------------------------------------------------------
    def fields_section(self, n: int) -> None:
        for _ in range(n):
            java_type = self.rng.choice(SCALARS * 2 + COLLECTIONS)
            name = self.fresh_name(self.fields)
            if java_type in COLLECTIONS:
                self.emit(1, f"private final {java_type} {name} = {self.literal(java_type)};")
            elif self.rng.random() < 0.5:
                self.emit(1, f"private {java_type} {name} = {self.literal(java_type)};")
            else:
                self.emit(1, f"private {java_type} {name};")
            self.fields.names[name] = java_type
        if self.rng.random() < 0.5:
            const = f"{self.rng.choice(ADJECTIVES)}_{self.rng.choice(NOUNS)}".upper()
            self.emit(1, f"private static final int {const} = {self.literal('int')};")

    def constructor(self, class_name: str) -> None:
        scalars = [(n, t) for n, t in self.fields.names.items() if t in SCALARS]
        params = self.rng.sample(scalars, min(len(scalars), self.rng.randint(1, 3)))
        self.emit(0, "")
        self.emit(1, f"public {class_name}({', '.join(f'{t} {n}' for n, t in params)}) {{")
        for n, _ in params:
            self.emit(2, f"this.{n} = {n};")
        self.emit(1, "}")

    def accessors(self) -> None:
        for name, java_type in list(self.fields.names.items()):
            if self.rng.random() < 0.5:
                continue
            prefix = "is" if java_type == "boolean" else "get"
            self.emit(0, "")
            self.emit(1, f"public {java_type} {prefix}{pascal(name)}() {{")
            self.emit(2, f"return {name};")
            self.emit(1, "}")
            self.methods.append(Method(f"{prefix}{pascal(name)}", java_type, []))
            if java_type in SCALARS and self.rng.random() < 0.6:
                self.emit(0, "")
                self.emit(1, f"public void set{pascal(name)}({java_type} {name}) {{")
                self.emit(2, f"this.{name} = {name};")
                self.emit(1, "}")
                self.methods.append(Method(f"set{pascal(name)}", "void", [(java_type, name)]))

    def method(self, *, static: bool = False) -> None:
        r = self.rng
        returns = r.choice(SCALARS + ["void", "void"])
        name = camel(r.choice(VERBS), r.choice(NOUNS)) if r.random() < 0.8 else r.choice(VERBS)
        if name in self.used_names:
            return
        self.used_names.add(name)
        scope = Scope() if static else self.fields.child()
        params = []
        for _ in range(r.randint(0, 3)):
            pname = self.fresh_name(scope)
            ptype = r.choice(SCALARS * 2 + COLLECTIONS[:1])
            scope.names[pname] = ptype
            params.append((ptype, pname))
        self.javadoc(name, params, returns)
        mods = "public static" if static else r.choice(["public", "public", "private", "protected"])
        self.emit(1, f"{mods} {returns} {name}({', '.join(f'{t} {n}' for t, n in params)}) {{")
        saved, self.methods = self.methods, [m for m in self.methods if m.static or not static]
        self.block(scope, 2, r.randint(2, 7), returns)
        if returns != "void":
            self.emit(2, f"return {self.expr(scope, returns)};")
        self.methods = saved
        self.emit(1, "}")
        self.methods.append(Method(name, returns, params, static))

    def javadoc(self, name: str, params: list[tuple[str, str]], returns: str) -> None:
        self.emit(0, "")
        if self.rng.random() < 0.4:
            return
        self.emit(1, "/**")
        self.emit(1, f" * Implements {name} for the given {self.rng.choice(NOUNS)}.")
        for _, p in params:
            self.emit(1, f" * @param {p} the {self.rng.choice(NOUNS)}")
        if returns != "void":
            self.emit(1, f" * @return the {self.rng.choice(ADJECTIVES)} {self.rng.choice(NOUNS)}")
        self.emit(1, " */")

    def overrides(self, class_name: str) -> None:
        shown = [n for n, t in self.fields.names.items() if t in SCALARS][:3]
        self.emit(0, "")
        self.emit(1, "@Override")
        self.emit(1, "public String toString() {")
        body = ' + ", " + '.join(f'"{n}=" + {n}' for n in shown) or '""'
        self.emit(2, f'return "{class_name}{{" + {body} + "}}";')
        self.emit(1, "}")

    def generic_helper(self) -> None:
        self.emit(0, "")
        self.emit(1, "private static <T> T firstOrDefault(List<T> items, T fallback) {")
        self.emit(2, "if (items == null || items.isEmpty()) {")
        self.emit(3, "return fallback;")
        self.emit(2, "}")
        self.emit(2, "return items.get(0);")
        self.emit(1, "}")
        self.methods.append(Method("firstOrDefault", "String", [("List<String>", "items"), ("String", "fallback")], True))

    # ---- whole types --------------------------------------------------
    def class_body(self, class_name: str, size: int) -> None:
        self.fields_section(self.rng.randint(2, 6))
        self.constructor(class_name)
        self.accessors()
        if self.rng.random() < 0.3:
            self.generic_helper()
        for _ in range(size):
            self.method(static=self.rng.random() < 0.15)
        if self.rng.random() < 0.5:
            self.overrides(class_name)

    def interface_body(self) -> None:
        for _ in range(self.rng.randint(2, 5)):
            returns = self.rng.choice(SCALARS + ["void"])
            name = camel(self.rng.choice(VERBS), self.rng.choice(NOUNS))
            if name in self.used_names:
                continue
            self.used_names.add(name)
            params = [(t, self.fresh_name(Scope())) for t in self.rng.sample(SCALARS, self.rng.randint(0, 2))]
            self.javadoc(name, params, returns)
            self.emit(1, f"{returns} {name}({', '.join(f'{t} {n}' for t, n in params)});")
            self.methods.append(Method(name, returns, params))
        self.emit(0, "")
        self.emit(1, "default boolean isReady() {")
        self.emit(2, f"return {self.rng.choice(['true', 'false'])};")
        self.emit(1, "}")

    def enum_body(self, nouns: list[str]) -> None:
        constants = [n.upper() for n in nouns]
        self.emit(1, ", ".join(f"{c}({i})" for i, c in enumerate(constants)) + ";")
        self.emit(0, "")
        self.emit(1, "private final int code;")
        self.emit(0, "")
        self.emit(1, f"{self.type_name}(int code) {{")
        self.emit(2, "this.code = code;")
        self.emit(1, "}")
        self.emit(0, "")
        self.emit(1, "public int getCode() {")
        self.emit(2, "return code;")
        self.emit(1, "}")
        self.emit(0, "")
        self.emit(1, "public String describe() {")
        self.emit(2, "switch (this) {")
        for c in constants:
            self.emit(3, f"case {c}:")
            self.emit(4, f'return "{c.lower()}";')
        self.emit(3, "default:")
        self.emit(4, 'return "unknown";')
        self.emit(2, "}")
        self.emit(1, "}")


def _imports(body: str) -> list[str]:
    needed = sorted({imp for raw, imps in IMPORTS.items() if f"{raw}<" in body for imp in imps
                     if imp.rsplit(".", 1)[1] in body})
    return [f"import {imp};" for imp in needed]


def generate_file(seed: int, index: int) -> tuple[str, str]:
    """One Java file of the corpus ``seed``: ``(relative path, source text)``.

    Deterministic: the same ``(seed, index)`` gives the same file on every machine.
    """
    rng = random.Random(zlib.crc32(f"apmae-demo:{seed}:{index}".encode()))
    writer = JavaFileWriter(rng)
    domain = rng.choice(DOMAINS)
    package = f"com.{rng.choice(COMPANIES)}.{domain}"
    kind = rng.choices(["class", "interface", "enum"], weights=[8, 1, 1])[0]
    if kind == "enum":
        nouns = rng.sample(ADJECTIVES, rng.randint(3, 6))
        writer.type_name = pascal(rng.choice(NOUNS), "kind")
        header = f"public enum {writer.type_name} {{"
        writer.enum_body(nouns)
    elif kind == "interface":
        writer.type_name = pascal(rng.choice(NOUNS), rng.choice(["Source", "Listener", "Provider"]))
        header = f"public interface {writer.type_name} {{"
        writer.interface_body()
    else:
        writer.type_name = pascal(rng.choice(NOUNS), rng.choice(CLASS_SUFFIXES))
        header = f"public class {writer.type_name} {{"
        writer.class_body(writer.type_name, rng.choices([1, 2, 4, 6, 10], weights=[2, 4, 4, 2, 1])[0])
    body = "\n".join(writer.lines)
    lines = [f"package {package};", ""] + _imports(body) + [""]
    if rng.random() < 0.7:
        lines += ["/**", f" * {writer.type_name} for the {domain} module.", " */"]
    lines += [header] + writer.lines + ["}", ""]
    # a numbered root per file keeps equal type names of one package apart
    return f"{index:05d}/{package.replace('.', '/')}/{writer.type_name}.java", "\n".join(lines)


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`write_corpus` wrote."""

    out_dir: Path
    n_files: int
    n_bytes: int
    n_lines: int


def generate_corpus(n_files: int, *, seed: int = 0):
    """Yield ``(relative path, source)`` for files ``0 .. n_files-1`` of corpus ``seed``."""
    if n_files < 1:
        raise ValueError(f"n_files={n_files}: ask for at least one file")
    for index in range(n_files):
        yield generate_file(seed, index)


def write_corpus(out_dir: str | Path, n_files: int, *, seed: int = 0) -> CorpusSummary:
    """Write ``n_files`` generated Java files for ``seed`` under ``out_dir``."""
    out_dir = Path(out_dir)
    n_bytes = n_lines = 0
    for rel, text in generate_corpus(n_files, seed=seed):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        n_bytes += len(text.encode("utf-8"))
        n_lines += text.count("\n")
    return CorpusSummary(out_dir=out_dir, n_files=n_files, n_bytes=n_bytes, n_lines=n_lines)
