//! The worst-case cost of one CEL expression, estimated before it ever runs, in the units and
//! with the rules kube-apiserver applies to `x-kubernetes-validations` (cel-go's static cost
//! estimator with the Kubernetes library estimates and `has()` free of charge).
//!
//! Every sub-expression gets a cost range and, where it is a string, bytes, list or map, a size
//! range. Sizes come from literals, from what an expression computes (concatenation, `split`,
//! macros), and otherwise from the schema: the field path an expression reads (`self.spec.tags`,
//! `self.items` iterated as `@items`, map keys as `@keys`, values as `@values`) is looked up in
//! [`Decl`], whose bounds come from `maxLength`, `maxItems` and `maxProperties`. A comprehension
//! costs its range's size times the cost of one step; `matches` costs the string's length times
//! a quarter of the pattern's; comparisons and concatenations of strings cost a tenth of their
//! length.

use std::collections::HashMap;
use std::rc::Rc;

use kube_cel::cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators,
};

use super::decl::{Decl, DeclKind};

/// A cost or size range that saturates instead of overflowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

impl Range {
    pub const ZERO: Range = Range { min: 0, max: 0 };
    const UNKNOWN: Range = Range {
        min: 0,
        max: u64::MAX,
    };

    pub const fn fixed(v: u64) -> Range {
        Range { min: v, max: v }
    }

    fn add(self, o: Range) -> Range {
        Range {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }

    fn mul(self, o: Range) -> Range {
        Range {
            min: self.min.saturating_mul(o.min),
            max: self.max.saturating_mul(o.max),
        }
    }

    /// Each bound times `factor`, rounded up.
    fn scale(self, factor: f64) -> Range {
        Range {
            min: scale(self.min, factor),
            max: scale(self.max, factor),
        }
    }

    fn union(self, o: Range) -> Range {
        Range {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

/// `x * factor` rounded up, saturating at `u64::MAX`.
fn scale(x: u64, factor: f64) -> u64 {
    let x = x as f64;
    if x > 0.0 && factor > 0.0 && x > u64::MAX as f64 / factor {
        return u64::MAX;
    }
    let v = (x * factor).ceil();
    if v >= 18_446_744_073_709_551_616.0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// Cost of one pass over a string, per character.
const STRING_TRAVERSAL: f64 = 0.1;
/// Cost of a regular expression, per character of its pattern.
const REGEX_LENGTH: f64 = 0.25;
const SELECT_OR_IDENT: Range = Range::fixed(1);
const LIST_CREATE: u64 = 10;
const MAP_CREATE: u64 = 30;
const STRUCT_CREATE: u64 = 40;
/// What `has()` costs beyond its operand: nothing, as Kubernetes configures CEL.
const PRESENCE_TEST: Range = Range::ZERO;

/// The accumulator macros iterate with; it has no field path.
fn is_accumulator(name: &str) -> bool {
    name == "@result" || name == "__result__"
}

/// Types as far as the estimate needs them: which overload a call takes, whether a select pays
/// for a field lookup, what an iteration variable holds.
#[derive(Clone, Debug)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Timestamp,
    Duration,
    Dyn,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Object(Rc<Decl>),
}

impl Ty {
    fn of(d: &Rc<Decl>) -> Ty {
        match &d.kind {
            DeclKind::Bool => Ty::Bool,
            DeclKind::Int => Ty::Int,
            DeclKind::Double => Ty::Double,
            DeclKind::String => Ty::String,
            DeclKind::Bytes => Ty::Bytes,
            DeclKind::Timestamp => Ty::Timestamp,
            DeclKind::Duration => Ty::Duration,
            DeclKind::Dyn => Ty::Dyn,
            DeclKind::List(e) => Ty::List(Box::new(Ty::of(e))),
            DeclKind::Map(k, v) => Ty::Map(Box::new(Ty::of(k)), Box::new(Ty::of(v))),
            DeclKind::Object(_) => Ty::Object(d.clone()),
        }
    }

    /// Fixed-size values: their size is 1.
    fn is_scalar(&self) -> bool {
        matches!(
            self,
            Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Timestamp | Ty::Duration
        )
    }

    fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    fn element(&self) -> Ty {
        match self {
            Ty::List(e) => (**e).clone(),
            Ty::Map(k, _) => (**k).clone(),
            _ => Ty::Dyn,
        }
    }
}

/// Which estimate a call gets. Calls that resolve to several overloads (on `dyn` operands) get
/// the union of their estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overload {
    Equals,
    /// `<`, `<=`, `>`, `>=` on strings or bytes.
    CompareText,
    AddString,
    AddBytes,
    AddList,
    InList,
    IndexList,
    IndexMap,
    Matches,
    Contains,
    StartsOrEndsWith,
    And,
    Or,
    Conditional,
    StringToBytes,
    BytesToString,
    /// The `ip` member of a CIDR.
    CidrIp,
    /// Everything else: constant time.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    List,
    Map,
}

/// Size ranges of the keys (indices) and values of a list or map built in the expression.
#[derive(Clone, Copy, Debug)]
struct Entry {
    container: Container,
    key: Range,
    value: Range,
}

impl Entry {
    fn union(a: Option<Entry>, b: Option<Entry>) -> Option<Entry> {
        let (a, b) = (a?, b?);
        Some(Entry {
            container: a.container,
            key: a.key.union(b.key),
            value: a.value.union(b.value),
        })
    }
}

/// A variable bound by a macro.
#[derive(Clone, Debug)]
struct Local {
    path: Vec<String>,
    size: Option<Range>,
    entry: Option<Entry>,
    ty: Ty,
}

/// What a function's estimate knows of an operand.
#[derive(Clone, Debug)]
struct Operand {
    path: Vec<String>,
    ty: Ty,
    size: Option<Range>,
    int_literal: Option<i64>,
}

impl Operand {
    fn size(&self) -> Range {
        self.size.unwrap_or(Range::UNKNOWN)
    }
}

/// A call whose operands have been estimated.
struct Site<'a> {
    e: &'a IdedExpr,
    call: &'a CallExpr,
    target: Option<Operand>,
    args: Vec<Operand>,
    arg_costs: Vec<Range>,
}

/// A function's estimate: its own cost (without its operands) and the size of its result.
struct Call {
    cost: Range,
    size: Option<Range>,
}

/// The estimated cost range of `expression`, a rule or message expression whose `self` (and
/// `oldSelf`) is `decl`. Errors only when it does not parse.
pub fn estimate(expression: &str, decl: &Rc<Decl>) -> Result<Range, String> {
    let parsed = kube_cel::cel::parser::Parser::new()
        .parse(expression)
        .map_err(|e| e.to_string())?;
    let mut c = Coster {
        root: decl.clone(),
        paths: HashMap::new(),
        sizes: HashMap::new(),
        entries: HashMap::new(),
        types: HashMap::new(),
        locals: HashMap::new(),
    };
    Ok(c.cost(&parsed))
}

struct Coster {
    root: Rc<Decl>,
    paths: HashMap<u64, Vec<String>>,
    sizes: HashMap<u64, Range>,
    entries: HashMap<u64, Entry>,
    types: HashMap<u64, Ty>,
    locals: HashMap<String, Vec<Local>>,
}

impl Coster {
    fn cost(&mut self, e: &IdedExpr) -> Range {
        match &e.expr {
            Expr::Literal(lit) => {
                let ty = match lit {
                    LiteralValue::Boolean(_) => Ty::Bool,
                    LiteralValue::Bytes(_) => Ty::Bytes,
                    LiteralValue::Double(_) => Ty::Double,
                    LiteralValue::Int(_) => Ty::Int,
                    LiteralValue::Null => Ty::Null,
                    LiteralValue::String(_) => Ty::String,
                    LiteralValue::UInt(_) => Ty::Uint,
                };
                self.types.insert(e.id, ty);
                Range::ZERO
            }
            Expr::Ident(name) => {
                let (path, ty) = match self.local(name) {
                    Some(l) => (l.path.clone(), l.ty.clone()),
                    None if name == "self" || name == "oldSelf" => {
                        (vec![name.clone()], Ty::of(&self.root))
                    }
                    None => (vec![name.clone()], Ty::Dyn),
                };
                self.paths.insert(e.id, path);
                self.types.insert(e.id, ty);
                SELECT_OR_IDENT
            }
            Expr::Select(sel) => {
                if sel.test {
                    self.types.insert(e.id, Ty::Bool);
                    return PRESENCE_TEST.add(self.cost(&sel.operand));
                }
                let mut sum = self.cost(&sel.operand);
                let operand = self.ty(&sel.operand);
                let ty = match &operand {
                    Ty::Object(d) => d.field(&sel.field).map(Ty::of).unwrap_or(Ty::Dyn),
                    Ty::Map(_, v) => (**v).clone(),
                    _ => Ty::Dyn,
                };
                if matches!(operand, Ty::Object(_) | Ty::Map(..)) {
                    sum = sum.add(SELECT_OR_IDENT);
                }
                let mut path = self.path(&sel.operand);
                path.push(sel.field.clone());
                self.paths.insert(e.id, path);
                self.types.insert(e.id, ty);
                sum
            }
            Expr::Call(call) => self.call(e, call),
            Expr::List(list) => {
                let mut sum = Range::ZERO;
                let mut items = Range {
                    min: if list.elements.is_empty() {
                        0
                    } else {
                        u64::MAX
                    },
                    max: 0,
                };
                let mut elem_ty = Ty::Dyn;
                for (i, item) in list.elements.iter().enumerate() {
                    sum = sum.add(self.cost(item));
                    items = items.union(self.size_or_unknown(item));
                    if i == 0 {
                        elem_ty = self.ty(item);
                    }
                }
                self.entries.insert(
                    e.id,
                    Entry {
                        container: Container::List,
                        key: Range::fixed(1),
                        value: items,
                    },
                );
                self.types.insert(e.id, Ty::List(Box::new(elem_ty)));
                sum.add(Range::fixed(LIST_CREATE))
            }
            Expr::Map(map) => {
                let mut sum = Range::ZERO;
                let start = if map.entries.is_empty() { 0 } else { u64::MAX };
                let mut keys = Range { min: start, max: 0 };
                let mut values = keys;
                let mut tys = (Ty::Dyn, Ty::Dyn);
                for (i, entry) in map.entries.iter().enumerate() {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        sum = sum.add(self.cost(&m.key)).add(self.cost(&m.value));
                        keys = keys.union(self.size_or_unknown(&m.key));
                        values = values.union(self.size_or_unknown(&m.value));
                        if i == 0 {
                            tys = (self.ty(&m.key), self.ty(&m.value));
                        }
                    }
                }
                self.entries.insert(
                    e.id,
                    Entry {
                        container: Container::Map,
                        key: keys,
                        value: values,
                    },
                );
                self.types
                    .insert(e.id, Ty::Map(Box::new(tys.0), Box::new(tys.1)));
                sum.add(Range::fixed(MAP_CREATE))
            }
            Expr::Struct(s) => {
                let mut sum = Range::ZERO;
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        sum = sum.add(self.cost(&f.value));
                    }
                }
                self.types.insert(e.id, Ty::Dyn);
                sum.add(Range::fixed(STRUCT_CREATE))
            }
            Expr::Comprehension(comp) => self.comprehension(e, comp),
            Expr::Unspecified => Range::ZERO,
        }
    }

    fn local(&self, name: &str) -> Option<&Local> {
        self.locals.get(name).and_then(|s| s.last())
    }

    fn push_local(&mut self, name: &str, local: Local) {
        self.locals.entry(name.to_string()).or_default().push(local);
    }

    fn pop_local(&mut self, name: &str) {
        if let Some(stack) = self.locals.get_mut(name) {
            stack.pop();
        }
    }

    fn ty(&self, e: &IdedExpr) -> Ty {
        self.types.get(&e.id).cloned().unwrap_or(Ty::Dyn)
    }

    fn path(&self, e: &IdedExpr) -> Vec<String> {
        if let Expr::Ident(name) = &e.expr
            && let Some(l) = self.local(name)
        {
            return l.path.clone();
        }
        self.paths.get(&e.id).cloned().unwrap_or_default()
    }

    fn entry(&self, e: &IdedExpr) -> Option<Entry> {
        if let Some(entry) = self.entries.get(&e.id) {
            return Some(*entry);
        }
        match &e.expr {
            Expr::Ident(name) => self.local(name).and_then(|l| l.entry),
            _ => None,
        }
    }

    /// The size of the value at `path` as the schema bounds it: `path[0]` is the variable
    /// (`self`), the rest fields, `@items`, `@values` or `@keys`.
    fn schema_size(&self, path: &[String]) -> Option<Range> {
        if path.is_empty() {
            return None;
        }
        let mut node = &self.root;
        for step in &path[1..] {
            node = match step.as_str() {
                "@items" | "@values" => node.element()?,
                "@keys" => node.key()?,
                field => node.field(field)?,
            };
        }
        Some(Range {
            min: 0,
            max: node.max_elements,
        })
    }

    /// What is known of the size of `e`: computed, literal, from the schema, fixed for scalars,
    /// or bound with a variable.
    fn size(&mut self, e: &IdedExpr) -> Option<Range> {
        if let Some(s) = self.sizes.get(&e.id) {
            return Some(*s);
        }
        let literal = match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Some(s.chars().count() as u64),
            Expr::Literal(LiteralValue::Bytes(b)) => Some(b.len() as u64),
            Expr::Literal(_) => Some(1),
            Expr::List(l) => Some(l.elements.len() as u64),
            Expr::Map(m) => Some(m.entries.len() as u64),
            _ => None,
        };
        if let Some(n) = literal {
            return Some(Range::fixed(n));
        }
        if let Some(s) = self.schema_size(&self.path(e)) {
            self.sizes.insert(e.id, s);
            return Some(s);
        }
        if self.ty(e).is_scalar() {
            return Some(Range::fixed(1));
        }
        match &e.expr {
            Expr::Ident(name) => self.local(name).and_then(|l| l.size),
            _ => None,
        }
    }

    fn size_or_unknown(&mut self, e: &IdedExpr) -> Range {
        self.size(e).unwrap_or(Range::UNKNOWN)
    }

    fn operand(&mut self, e: &IdedExpr) -> Operand {
        let mut path = self.path(e);
        if path.first().is_some_and(|p| is_accumulator(p)) {
            path.clear();
        }
        Operand {
            path,
            ty: self.ty(e),
            size: self.size(e),
            int_literal: match &e.expr {
                Expr::Literal(LiteralValue::Int(i)) => Some(**i),
                _ => None,
            },
        }
    }

    fn call(&mut self, e: &IdedExpr, call: &CallExpr) -> Range {
        let name = call.func_name.as_str();
        if name == "dyn" && call.target.is_none() && call.args.len() == 1 {
            let arg = &call.args[0];
            let cost = self.cost(arg);
            if let Some(s) = self.size(arg) {
                self.sizes.insert(e.id, s);
            }
            if let Some(entry) = self.entry(arg) {
                self.entries.insert(e.id, entry);
            }
            self.types.insert(e.id, Ty::Dyn);
            return Range::fixed(1).add(cost);
        }
        let mut arg_costs = Vec::with_capacity(call.args.len());
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            arg_costs.push(self.cost(a));
            args.push(self.operand(a));
        }
        let mut sum = Range::ZERO;
        let target = match &call.target {
            Some(t) => {
                sum = sum.add(self.cost(t));
                Some(self.operand(t))
            }
            None => None,
        };
        self.types
            .insert(e.id, result_type(name, target.as_ref(), &args));
        let site = Site {
            e,
            call,
            target,
            args,
            arg_costs,
        };
        let mut fn_cost = Range {
            min: u64::MAX,
            max: 0,
        };
        let mut result: Option<Range> = None;
        for overload in overloads(name, site.target.as_ref(), &site.args) {
            let est = self.function(&site, overload);
            fn_cost = fn_cost.union(est.cost);
            if let Some(s) = est.size {
                result = Some(result.map_or(s, |r| r.union(s)));
            }
            let index = match overload {
                Overload::IndexList => Some("@items"),
                Overload::IndexMap => Some("@values"),
                _ => None,
            };
            if let (Some(step), Some(container)) = (index, call.args.first()) {
                result = self.entry(container).map(|x| x.value);
                let mut path = self.path(container);
                path.push(step.to_string());
                self.paths.insert(e.id, path);
            }
            if result.is_none() {
                result = self.size(e);
            }
        }
        if let Some(s) = result {
            self.sizes.insert(e.id, s);
        }
        sum.add(fn_cost)
    }

    /// The estimate of `site` as `overload`.
    fn function(&mut self, site: &Site, overload: Overload) -> Call {
        let (e, call, name) = (site.e, site.call, site.call.func_name.as_str());
        let (target, args, arg_costs) = (site.target.as_ref(), &site.args, &site.arg_costs);
        let arg_sum = arg_costs.iter().fold(Range::ZERO, |s, c| s.add(*c));
        if let Some(est) = self.library(name, overload, target, args) {
            return Call {
                cost: est.cost.add(arg_sum),
                size: est.size,
            };
        }
        let plain = |cost: Range| Call { cost, size: None };
        match overload {
            Overload::StringToBytes if args.len() == 1 => {
                let sz = args[0].size();
                Call {
                    cost: sz.scale(STRING_TRAVERSAL).add(arg_sum),
                    size: Some(Range {
                        min: sz.min,
                        max: sz.max.saturating_mul(4),
                    }),
                }
            }
            Overload::BytesToString if args.len() == 1 => {
                let sz = args[0].size();
                Call {
                    cost: sz.scale(STRING_TRAVERSAL).add(arg_sum),
                    size: Some(Range {
                        min: sz.min / 4,
                        max: sz.max,
                    }),
                }
            }
            Overload::StartsOrEndsWith if args.len() == 1 => {
                plain(args[0].size().scale(STRING_TRAVERSAL).add(arg_sum))
            }
            Overload::InList if args.len() == 2 => plain(args[1].size().scale(1.0).add(arg_sum)),
            Overload::Matches if args.len() == 1 => match target {
                Some(t) => {
                    let text = t.size().add(Range::fixed(1)).scale(STRING_TRAVERSAL);
                    let regex = args[0].size().scale(REGEX_LENGTH);
                    plain(text.mul(regex).add(arg_sum))
                }
                None => plain(Range::fixed(1).add(arg_sum)),
            },
            Overload::Contains if args.len() == 1 => match target {
                Some(t) => {
                    let text = t.size().scale(STRING_TRAVERSAL);
                    let sub = args[0].size().scale(STRING_TRAVERSAL);
                    plain(text.mul(sub).add(arg_sum))
                }
                None => plain(Range::fixed(1).add(arg_sum)),
            },
            Overload::And | Overload::Or if arg_costs.len() == 2 => plain(Range {
                min: arg_costs[0].min,
                max: arg_costs[0].max.saturating_add(arg_costs[1].max),
            }),
            Overload::Conditional if args.len() == 3 => {
                let size = args[1].size().union(args[2].size());
                let entry = Entry::union(self.entry(&call.args[1]), self.entry(&call.args[2]));
                if let Some(entry) = entry {
                    self.entries.insert(e.id, entry);
                }
                Call {
                    cost: arg_costs[0].add(arg_costs[1].union(arg_costs[2])),
                    size: Some(size),
                }
            }
            Overload::AddString | Overload::AddBytes | Overload::AddList if args.len() == 2 => {
                let size = args[0].size().add(args[1].size());
                let entry = Entry::union(self.entry(&call.args[0]), self.entry(&call.args[1]));
                if let Some(entry) = entry {
                    self.entries.insert(e.id, entry);
                }
                let cost = if overload == Overload::AddList {
                    Range::fixed(1).add(arg_sum)
                } else {
                    size.scale(STRING_TRAVERSAL).add(arg_sum)
                };
                Call {
                    cost,
                    size: Some(size),
                }
            }
            Overload::Equals | Overload::CompareText if args.len() == 2 => {
                let smallest = args[0].size().max.min(args[1].size().max);
                let range = Range {
                    min: u64::from(smallest > 0),
                    max: smallest,
                };
                plain(range.scale(STRING_TRAVERSAL).add(arg_sum))
            }
            _ => plain(Range::fixed(1).add(arg_sum)),
        }
    }

    /// The Kubernetes library's estimates (string, list, URL, IP, quantity and semver
    /// functions), which take precedence over CEL's own.
    fn library(
        &mut self,
        name: &str,
        overload: Overload,
        target: Option<&Operand>,
        args: &[Operand],
    ) -> Option<Call> {
        let traversal = |o: &Operand| o.size().scale(STRING_TRAVERSAL);
        let fixed = |v| {
            Some(Call {
                cost: Range::fixed(v),
                size: None,
            })
        };
        match name {
            "isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf" => {
                let t = target?;
                if let Ty::List(elem) | Ty::Map(elem, _) = &t.ty {
                    let mut per_item = Range::fixed(1);
                    if matches!(**elem, Ty::String | Ty::Bytes) {
                        let mut path = t.path.clone();
                        let size = if path.is_empty() {
                            Range::UNKNOWN
                        } else {
                            path.push("@items".into());
                            self.schema_size(&path).unwrap_or(Range::UNKNOWN)
                        };
                        per_item = per_item.add(size.scale(STRING_TRAVERSAL));
                    }
                    Some(Call {
                        cost: t.size().mul(per_item),
                        size: None,
                    })
                } else {
                    Some(Call {
                        cost: traversal(t),
                        size: None,
                    })
                }
            }
            "url" if args.len() == 1 => Some(Call {
                cost: traversal(&args[0]),
                size: Some(args[0].size()),
            }),
            "lowerAscii" | "upperAscii" | "substring" | "trim" => {
                let t = target?;
                Some(Call {
                    cost: traversal(t),
                    size: Some(t.size()),
                })
            }
            "replace" if args.len() >= 2 => {
                let t = target?;
                let sz = t.size();
                let (from, to) = (args[0].size(), args[1].size());
                let (mut count, mut kept) = (Range::ZERO, Range::ZERO);
                if from.min == 0 {
                    count.max = sz.max.saturating_add(1);
                    kept.max = sz.max;
                } else if to.max <= from.min {
                    kept.max = sz.max;
                } else {
                    count.max = (sz.max as f64 / from.min as f64).ceil() as u64;
                }
                if from.max == 0 {
                    count.min = sz.min.saturating_add(1);
                    kept.min = sz.min;
                } else if from.max <= to.min {
                    kept.min = sz.min;
                } else {
                    count.min = (sz.min as f64 / from.max as f64).ceil() as u64;
                }
                Some(Call {
                    cost: sz.scale(2.0 * STRING_TRAVERSAL),
                    size: Some(count.mul(to).add(kept)),
                })
            }
            "split" => {
                let t = target?;
                let sz = t.size();
                let max = match args.get(1).and_then(|a| a.int_literal) {
                    Some(n) => n as u64,
                    None => sz.max,
                };
                Some(Call {
                    cost: sz.scale(2.0 * STRING_TRAVERSAL),
                    size: Some(Range { min: 0, max }),
                })
            }
            "join" => {
                let t = target?;
                let list = t.size();
                let mut sz = Range::ZERO;
                if !matches!(t.ty, Ty::Dyn) {
                    let mut path = t.path.clone();
                    let elem = if path.is_empty() {
                        Range::UNKNOWN
                    } else {
                        path.push("@items".into());
                        self.schema_size(&path).unwrap_or(Range::UNKNOWN)
                    };
                    sz = list.mul(elem);
                }
                if let Some(sep) = args.first() {
                    let separators = Range {
                        min: list.min.saturating_sub(1),
                        max: list.max.saturating_sub(1),
                    };
                    sz = sz.add(sep.size().mul(separators));
                }
                Some(Call {
                    cost: sz.scale(STRING_TRAVERSAL),
                    size: Some(sz),
                })
            }
            "find" | "findAll" if !args.is_empty() => {
                let t = target?;
                let text = t.size().add(Range::fixed(1)).scale(STRING_TRAVERSAL);
                let regex = args[0].size().scale(REGEX_LENGTH);
                Some(Call {
                    cost: text.mul(regex),
                    size: Some(Range {
                        min: 0,
                        max: t.size().max,
                    }),
                })
            }
            "ip" if overload == Overload::CidrIp => fixed(1),
            "cidr" | "isIP" | "isCIDR" | "ip" | "quantity" | "isQuantity" | "semver"
            | "isSemver"
                if !args.is_empty() =>
            {
                Some(Call {
                    cost: traversal(&args[0]),
                    size: None,
                })
            }
            "format.named"
            | "sign"
            | "asInteger"
            | "isInteger"
            | "asApproximateFloat"
            | "isGreaterThan"
            | "isLessThan"
            | "compareTo"
            | "add"
            | "sub"
            | "major"
            | "minor"
            | "patch"
            | "getScheme"
            | "getHostname"
            | "getHost"
            | "getPort"
            | "getEscapedPath"
            | "getQuery"
            | "masked"
            | "prefixLength"
            | "family"
            | "isUnspecified"
            | "isLoopback"
            | "isLinkLocalMulticast"
            | "isLinkLocalUnicast"
            | "isGlobalUnicast" => fixed(1),
            _ => None,
        }
    }

    fn comprehension(&mut self, e: &IdedExpr, comp: &ComprehensionExpr) -> Range {
        let mut sum = self.cost(&comp.iter_range);
        sum = sum.add(self.cost(&comp.accu_init));
        let accu = Local {
            path: self.path(&comp.accu_init),
            size: self.size(&comp.accu_init),
            entry: self.entry(&comp.accu_init),
            ty: self.ty(&comp.accu_init),
        };
        self.push_local(&comp.accu_var, accu);

        let range_entry = self.entry(&comp.iter_range);
        let range_ty = self.ty(&comp.iter_range);
        let container = match range_entry.map(|x| x.container) {
            Some(c) => c,
            None if matches!(range_ty, Ty::List(_)) => Container::List,
            None => Container::Map,
        };
        let range_path = self.path(&comp.iter_range);
        let at = |step: &str| {
            let mut p = range_path.clone();
            p.push(step.to_string());
            p
        };
        match &comp.iter_var2 {
            Some(second) => {
                let (key_step, value_step, key_ty, value_ty) = match container {
                    Container::List => ("@indices", "@items", Ty::Int, range_ty.element()),
                    Container::Map => (
                        "@keys",
                        "@values",
                        range_ty.element(),
                        match &range_ty {
                            Ty::Map(_, v) => (**v).clone(),
                            _ => Ty::Dyn,
                        },
                    ),
                };
                let key = Local {
                    path: at(key_step),
                    size: range_entry.map(|x| x.key),
                    entry: None,
                    ty: key_ty,
                };
                let value = Local {
                    path: at(value_step),
                    size: range_entry.map(|x| x.value),
                    entry: None,
                    ty: value_ty,
                };
                self.push_local(&comp.iter_var, key);
                self.push_local(second, value);
            }
            None => {
                let (step, size) = match container {
                    Container::List => ("@items", range_entry.map(|x| x.value)),
                    Container::Map => ("@keys", range_entry.map(|x| x.key)),
                };
                let var = Local {
                    path: at(step),
                    size,
                    entry: None,
                    ty: range_ty.element(),
                };
                self.push_local(&comp.iter_var, var);
            }
        }
        let per_loop = self.cost(&comp.loop_cond);
        let per_step = self.cost(&comp.loop_step);
        self.pop_local(&comp.iter_var);
        if let Some(second) = &comp.iter_var2 {
            self.pop_local(second);
        }
        sum = sum.add(self.cost(&comp.result));
        self.pop_local(&comp.accu_var);

        let count = self.size_or_unknown(&comp.iter_range);
        sum = sum.add(count.mul(per_step.add(per_loop)));

        let ty = match &comp.accu_init.expr {
            Expr::List(_) | Expr::Map(_) => self.ty(&comp.loop_step),
            _ => self.ty(&comp.result),
        };
        self.types.insert(e.id, ty);
        match &comp.accu_init.expr {
            Expr::Literal(_) => {
                if let Some(s) = self.size(&comp.accu_init) {
                    self.sizes.insert(e.id, s);
                }
            }
            Expr::List(_) | Expr::Map(_) => {
                self.sizes.insert(e.id, count);
                if let Some(entry) = self.entry(&comp.loop_step) {
                    self.entries.insert(e.id, entry);
                }
            }
            _ => {}
        }
        sum
    }
}

/// The overloads `name` resolves to for operands of these types.
fn overloads(name: &str, target: Option<&Operand>, args: &[Operand]) -> Vec<Overload> {
    let first_typed = || args.iter().map(|a| &a.ty).find(|t| !t.is_dyn());
    match name {
        operators::EQUALS | operators::NOT_EQUALS => vec![Overload::Equals],
        operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS => match first_typed() {
            Some(Ty::String | Ty::Bytes) => vec![Overload::CompareText],
            Some(_) => vec![Overload::Other],
            None => vec![Overload::CompareText, Overload::Other],
        },
        operators::ADD => match first_typed() {
            Some(Ty::String) => vec![Overload::AddString],
            Some(Ty::Bytes) => vec![Overload::AddBytes],
            Some(Ty::List(_)) => vec![Overload::AddList],
            Some(_) => vec![Overload::Other],
            None => vec![
                Overload::AddString,
                Overload::AddBytes,
                Overload::AddList,
                Overload::Other,
            ],
        },
        operators::IN => match args.get(1).map(|a| &a.ty) {
            Some(Ty::List(_)) => vec![Overload::InList],
            Some(Ty::Dyn) => vec![Overload::InList, Overload::Other],
            _ => vec![Overload::Other],
        },
        operators::INDEX => match args.first().map(|a| &a.ty) {
            Some(Ty::List(_)) => vec![Overload::IndexList],
            Some(Ty::Map(..)) => vec![Overload::IndexMap],
            Some(Ty::Dyn) => vec![Overload::IndexList, Overload::IndexMap],
            _ => vec![Overload::Other],
        },
        operators::LOGICAL_AND => vec![Overload::And],
        operators::LOGICAL_OR => vec![Overload::Or],
        operators::CONDITIONAL => vec![Overload::Conditional],
        "matches" if target.is_some() => vec![Overload::Matches],
        "contains" if target.is_some() => vec![Overload::Contains],
        "startsWith" | "endsWith" if target.is_some() => vec![Overload::StartsOrEndsWith],
        "bytes" if matches!(args.first().map(|a| &a.ty), Some(Ty::String)) => {
            vec![Overload::StringToBytes]
        }
        "string" if matches!(args.first().map(|a| &a.ty), Some(Ty::Bytes)) => {
            vec![Overload::BytesToString]
        }
        "ip" if target.is_some() => vec![Overload::CidrIp],
        _ => vec![Overload::Other],
    }
}

/// The type of a call's result, as far as later estimates need it.
fn result_type(name: &str, target: Option<&Operand>, args: &[Operand]) -> Ty {
    let first_typed = || {
        args.iter()
            .map(|a| a.ty.clone())
            .find(|t| !t.is_dyn())
            .unwrap_or(Ty::Dyn)
    };
    match name {
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS
        | operators::LOGICAL_AND
        | operators::LOGICAL_OR
        | operators::LOGICAL_NOT
        | operators::NOT_STRICTLY_FALSE
        | operators::IN
        | "matches"
        | "contains"
        | "startsWith"
        | "endsWith"
        | "isSorted"
        | "isIP"
        | "isCIDR"
        | "isQuantity"
        | "isSemver"
        | "isURL"
        | "isInteger" => Ty::Bool,
        "size" | "indexOf" | "lastIndexOf" | "int" | "compareTo" => Ty::Int,
        "uint" => Ty::Uint,
        "double" | "asApproximateFloat" => Ty::Double,
        operators::ADD
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO
        | operators::NEGATE => first_typed(),
        operators::CONDITIONAL => match args.get(1).map(|a| a.ty.clone()) {
            Some(Ty::Dyn) | None => args.get(2).map(|a| a.ty.clone()).unwrap_or(Ty::Dyn),
            Some(t) => t,
        },
        operators::INDEX => match args.first().map(|a| &a.ty) {
            Some(Ty::List(e)) => (**e).clone(),
            Some(Ty::Map(_, v)) => (**v).clone(),
            _ => Ty::Dyn,
        },
        "lowerAscii" | "upperAscii" | "trim" | "substring" | "replace" | "join" | "string"
        | "format" | "find" | "quote" | "getScheme" | "getHost" | "getHostname" | "getPort"
        | "getEscapedPath" | "getQuery" => Ty::String,
        "split" | "findAll" => Ty::List(Box::new(Ty::String)),
        "bytes" => Ty::Bytes,
        "timestamp" => Ty::Timestamp,
        "duration" => Ty::Duration,
        "sum" | "min" | "max" => target.map(|t| t.ty.element()).unwrap_or(Ty::Dyn),
        _ => Ty::Dyn,
    }
}
