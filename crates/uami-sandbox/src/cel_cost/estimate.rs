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

use kube_cel::cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};

use super::decl::Decl;

mod comprehension;
mod function;
mod typing;

use typing::{Overload, Ty, overloads, result_type};

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
}
