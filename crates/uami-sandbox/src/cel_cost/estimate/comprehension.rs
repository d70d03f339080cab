//! The estimate of a comprehension (the macros `all`, `exists`, `map`, `filter`, ...): its range
//! once, then its loop condition and step once per element.

use kube_cel::cel::common::ast::{ComprehensionExpr, Expr, IdedExpr};

use super::typing::Ty;
use super::{Container, Coster, Local, Range};

impl Coster {
    pub(super) fn comprehension(&mut self, e: &IdedExpr, comp: &ComprehensionExpr) -> Range {
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
