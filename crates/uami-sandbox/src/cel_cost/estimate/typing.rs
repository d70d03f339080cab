//! The types the estimate tracks and the overloads a call resolves to for them.

use std::rc::Rc;

use kube_cel::cel::common::ast::operators;

use super::Operand;
use crate::cel_cost::decl::{Decl, DeclKind};

/// Types as far as the estimate needs them: which overload a call takes, whether a select pays
/// for a field lookup, what an iteration variable holds.
#[derive(Clone, Debug)]
pub(super) enum Ty {
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
    pub(super) fn of(d: &Rc<Decl>) -> Ty {
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
    pub(super) fn is_scalar(&self) -> bool {
        matches!(
            self,
            Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Timestamp | Ty::Duration
        )
    }

    pub(super) fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    pub(super) fn element(&self) -> Ty {
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
pub(super) enum Overload {
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

/// The overloads `name` resolves to for operands of these types.
pub(super) fn overloads(name: &str, target: Option<&Operand>, args: &[Operand]) -> Vec<Overload> {
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
pub(super) fn result_type(name: &str, target: Option<&Operand>, args: &[Operand]) -> Ty {
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
