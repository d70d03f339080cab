//! The estimates of function calls: CEL's own overloads, and the Kubernetes library's (string,
//! list, URL, IP, quantity and semver functions), which take precedence.

use super::typing::{Overload, Ty};
use super::{Call, Coster, Entry, Operand, REGEX_LENGTH, Range, STRING_TRAVERSAL, Site};

impl Coster {
    /// The estimate of `site` as `overload`.
    pub(super) fn function(&mut self, site: &Site, overload: Overload) -> Call {
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

    /// The size of one item of the list `list` as the schema bounds it (unknown for a list
    /// that is not a path into the schema).
    fn item_size(&self, list: &Operand) -> Range {
        if list.path.is_empty() {
            return Range::UNKNOWN;
        }
        let mut path = list.path.clone();
        path.push("@items".into());
        self.schema_size(&path).unwrap_or(Range::UNKNOWN)
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
                        per_item = per_item.add(self.item_size(t).scale(STRING_TRAVERSAL));
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
                let (count_max, kept_max) = replace_bound(sz.max, from.min, to.max <= from.min);
                let (count_min, kept_min) = replace_bound(sz.min, from.max, from.max <= to.min);
                let count = Range {
                    min: count_min,
                    max: count_max,
                };
                let kept = Range {
                    min: kept_min,
                    max: kept_max,
                };
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
                    sz = list.mul(self.item_size(t));
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
}

/// One bound (the upper or the lower) of `replace` on a string of `len` bytes, replacing `from`
/// bytes: how many replacements count, and how many bytes of the string count as kept (all of
/// them when `length_bounds` says a replacement cannot move the result past that bound).
fn replace_bound(len: u64, from: u64, length_bounds: bool) -> (u64, u64) {
    if from == 0 {
        (len.saturating_add(1), len)
    } else if length_bounds {
        (0, len)
    } else {
        ((len as f64 / from as f64).ceil() as u64, 0)
    }
}
