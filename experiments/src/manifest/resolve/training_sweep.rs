//! Resolving `[training_sweep]`: each swept field checked against the same ranges as the manifest's own field,
//! the points expanded (grid, seeded random, explicit list), the selection metric and the ASHA rule checked.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::super::defaults;
use super::super::raw::{RawAsha, RawTrainingSweep, RawValues, S};
use super::super::training_sweep::{
    AshaSpec, DEFAULT_MAX_POINTS, Dimension, FieldKind, FieldValue, SearchMethod, Selection,
    TrainField, TrainPoint, TrainingSweep, grid_points, sample_points,
};
use super::super::types::{EvaluationSpec, ModelFamily, Stage, StageSpec};
use super::{Resolver, span, value};

const PREFIX: &str = "training_sweep";

/// The space entries, parsed: a field, its value, where it is written and its path for errors.
type Entries = Vec<(TrainField, toml::Value, Range<usize>, String)>;

/// A table's `field = value` entries in manifest order, with dotted keys written unquoted (`lora.r = [8, 16]`,
/// which TOML reads as a `lora` table) flattened to `lora.r`. Inner values carry their parent's span.
fn flatten(
    table: &BTreeMap<String, Spanned<toml::Value>>,
) -> Vec<(String, toml::Value, Range<usize>)> {
    let mut out = Vec::new();
    for (name, entry) in table {
        match entry.get_ref() {
            toml::Value::Table(inner) if name == "lora" || name == "training" => {
                for (key, v) in inner {
                    out.push((format!("{name}.{key}"), v.clone(), entry.span()));
                }
            }
            v => out.push((name.clone(), v.clone(), entry.span())),
        }
    }
    out.sort_by_key(|(_, _, at)| at.start);
    out
}

impl Resolver<'_> {
    pub(super) fn training_sweep(
        &mut self,
        raw: &S<RawTrainingSweep>,
        seed: u64,
        family: ModelFamily,
        stages: &[(Stage, &StageSpec)],
        evaluation: &EvaluationSpec,
    ) -> Option<TrainingSweep> {
        let table = raw.as_ref()?;
        let whole = Some(table.span());
        let sweep = table.get_ref();
        let stage = value(&sweep.stage, Stage::Stage1);
        let method = value(
            &sweep.method,
            match sweep.points {
                Some(_) => SearchMethod::List,
                None => SearchMethod::Grid,
            },
        );
        let (fields, points) = match method {
            SearchMethod::List => {
                if let Some(space) = &sweep.space {
                    self.error(
                        Some(space.span()),
                        &format!("{PREFIX}.space"),
                        "a list sweep takes [[training_sweep.points]], not a space",
                        "method = \"grid\" or \"random\" with a space",
                    );
                }
                self.list_points(&sweep.points, whole.clone(), family)
            }
            SearchMethod::Grid | SearchMethod::Random => {
                if let Some(points) = &sweep.points {
                    self.error(
                        Some(points.span()),
                        &format!("{PREFIX}.points"),
                        format!("a {} sweep takes a space, not points", method.as_str()),
                        "method = \"list\" with [[training_sweep.points]]",
                    );
                }
                let entries = self.space_entries(&sweep.space, whole.clone());
                let fields = entries.iter().map(|(f, _, _, _)| *f).collect();
                let points = match method {
                    SearchMethod::Grid => self.grid(&entries, family),
                    _ => self.random(&entries, &sweep.samples, whole.clone(), family, seed, sweep),
                };
                (fields, points)
            }
        };
        if points.is_empty() && fields_given(sweep) {
            self.error(
                whole.clone(),
                PREFIX,
                "the sweep has no points",
                "at least one value per swept field",
            );
        }
        let select = self.selection(&sweep.select, evaluation);
        let max_points = value(&sweep.max_points, DEFAULT_MAX_POINTS);
        if max_points == 0 {
            self.error(
                span(&sweep.max_points),
                &format!("{PREFIX}.max_points"),
                "must be at least 1, got 0",
                "an integer >= 1",
            );
        }
        let spec = stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, spec)| *spec)
            .expect("both stages");
        let asha = sweep
            .asha
            .as_ref()
            .and_then(|asha| self.asha(asha.get_ref(), asha.span(), spec));
        Some(TrainingSweep {
            stage,
            method,
            fields,
            points,
            select,
            feed: value(&sweep.feed, true),
            asha,
            max_points,
        })
    }

    fn space_entries(&mut self, space: &S<RawValues>, whole: Option<Range<usize>>) -> Entries {
        let Some(space) = space else {
            self.error(
                whole,
                &format!("{PREFIX}.space"),
                "missing (required)",
                "a [training_sweep.space] table of field = values",
            );
            return Vec::new();
        };
        if space.get_ref().is_empty() {
            self.error(
                Some(space.span()),
                &format!("{PREFIX}.space"),
                "must name at least one field",
                &TrainField::accepted(),
            );
        }
        let mut entries: Entries = Vec::new();
        for (name, entry, at) in flatten(space.get_ref()) {
            let path = format!("{PREFIX}.space.{name}");
            match TrainField::parse(&name) {
                Some(field) => entries.push((field, entry, at, path)),
                None => self.error(
                    Some(at),
                    &path,
                    format!("{name:?} is not a field a training sweep can vary"),
                    &TrainField::accepted(),
                ),
            }
        }
        entries
    }

    fn grid(&mut self, entries: &Entries, family: ModelFamily) -> Vec<TrainPoint> {
        let mut lists = Vec::new();
        for (field, entry, at, path) in entries {
            let Some(items) = entry.as_array() else {
                self.error(
                    Some(at.clone()),
                    path,
                    "a grid sweeps a list of values",
                    &format!("a non-empty list of {}", field.kind().describe()),
                );
                continue;
            };
            if items.is_empty() {
                self.error(
                    Some(at.clone()),
                    path,
                    "the grid is empty: no values",
                    &format!("a non-empty list of {}", field.kind().describe()),
                );
            }
            let values = self.values(*field, items, at.clone(), path, family);
            lists.push((*field, values));
        }
        grid_points(&lists)
    }

    fn random(
        &mut self,
        entries: &Entries,
        samples: &S<usize>,
        whole: Option<Range<usize>>,
        family: ModelFamily,
        manifest_seed: u64,
        sweep: &RawTrainingSweep,
    ) -> Vec<TrainPoint> {
        let count = match samples {
            Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
            Some(n) => {
                self.error(
                    Some(n.span()),
                    &format!("{PREFIX}.samples"),
                    "must be at least 1, got 0",
                    "an integer >= 1",
                );
                0
            }
            None => {
                self.error(
                    whole,
                    &format!("{PREFIX}.samples"),
                    "missing (required for method = \"random\")",
                    "how many points to draw, an integer >= 1",
                );
                0
            }
        };
        let mut dims = Vec::new();
        for (field, entry, at, path) in entries {
            let kind = field.kind();
            match entry {
                toml::Value::Array(items) => {
                    if items.is_empty() {
                        self.error(
                            Some(at.clone()),
                            path,
                            "no values to choose from",
                            "a non-empty list, or { min, max, log }",
                        );
                        continue;
                    }
                    let values = self.values(*field, items, at.clone(), path, family);
                    dims.push((*field, Dimension::Choice(values)));
                }
                toml::Value::Table(range) if kind != FieldKind::Modules => {
                    if let Some(dim) = self.range(*field, range, at.clone(), path) {
                        dims.push((*field, dim));
                    }
                }
                _ => self.error(
                    Some(at.clone()),
                    path,
                    "a random sweep draws from a list or a range",
                    &format!("a list of {}, or {{ min, max, log }}", kind.describe()),
                ),
            }
        }
        if dims.len() != entries.len() || dims.is_empty() {
            return Vec::new();
        }
        sample_points(&dims, count, value(&sweep.seed, manifest_seed))
    }

    fn range(
        &mut self,
        field: TrainField,
        table: &toml::map::Map<String, toml::Value>,
        at: Range<usize>,
        path: &str,
    ) -> Option<Dimension> {
        let accepted = format!(
            "{{ min, max, log }} with min < max, both {}",
            field.kind().describe()
        );
        if let Some(key) = table
            .keys()
            .find(|k| !["min", "max", "log"].contains(&k.as_str()))
        {
            self.error(
                Some(at),
                path,
                format!("unknown key {key:?} in a range"),
                &accepted,
            );
            return None;
        }
        let number = |key: &str| table.get(key).and_then(as_number);
        let (Some(min), Some(max)) = (number("min"), number("max")) else {
            self.error(
                Some(at),
                path,
                "a range needs numbers min and max",
                &accepted,
            );
            return None;
        };
        let log = match table.get("log") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                self.error(Some(at), path, "log must be true or false", &accepted);
                return None;
            }
        };
        let kind = field.kind();
        let integer = matches!(kind, FieldKind::Integer { .. });
        let valid = |v: f64| kind.accepts(v) || integer && kind.accepts(v.round());
        if !valid(min) || !valid(max) || min >= max || log && min <= 0.0 {
            let why = if log && min <= 0.0 {
                "a log range needs min > 0"
            } else {
                "not a valid range"
            };
            self.error(
                Some(at),
                path,
                format!("{why}: min {min}, max {max}"),
                &accepted,
            );
            return None;
        }
        Some(Dimension::Range { min, max, log })
    }

    fn list_points(
        &mut self,
        points: &S<Vec<Spanned<RawValues>>>,
        whole: Option<Range<usize>>,
        family: ModelFamily,
    ) -> (Vec<TrainField>, Vec<TrainPoint>) {
        let Some(list) = points else {
            self.error(
                whole,
                &format!("{PREFIX}.points"),
                "missing (required for method = \"list\")",
                "[[training_sweep.points]] tables of field = value",
            );
            return (Vec::new(), Vec::new());
        };
        let mut fields: Option<Vec<TrainField>> = None;
        let mut out = Vec::new();
        for (index, point) in list.get_ref().iter().enumerate() {
            let prefix = format!("{PREFIX}.points[{index}]");
            let mut values = Vec::new();
            for (name, entry, at) in flatten(point.get_ref()) {
                let path = format!("{prefix}.{name}");
                let Some(field) = TrainField::parse(&name) else {
                    self.error(
                        Some(at),
                        &path,
                        format!("{name:?} is not a field a training sweep can vary"),
                        &TrainField::accepted(),
                    );
                    continue;
                };
                let items = std::slice::from_ref(&entry);
                if let Some(v) = self.values(field, items, at, &path, family).pop() {
                    values.push((field, v));
                }
            }
            let named: Vec<TrainField> = values.iter().map(|(f, _)| *f).collect();
            match &fields {
                None => fields = Some(named),
                Some(first) if sorted(first) != sorted(&named) => self.error(
                    Some(point.span()),
                    &prefix,
                    format!(
                        "names {}, the first point names {}",
                        names(&named),
                        names(first)
                    ),
                    "the same fields in every point",
                ),
                Some(first) => values.sort_by_key(|(f, _)| first.iter().position(|x| x == f)),
            }
            out.push(TrainPoint { values });
        }
        if out.is_empty() {
            self.error(
                Some(list.span()),
                &format!("{PREFIX}.points"),
                "the list is empty",
                "at least one point",
            );
        }
        (fields.unwrap_or_default(), out)
    }

    /// Each item of `items` checked as a value of `field`; the valid ones, once each.
    fn values(
        &mut self,
        field: TrainField,
        items: &[toml::Value],
        at: Range<usize>,
        path: &str,
        family: ModelFamily,
    ) -> Vec<FieldValue> {
        let kind = field.kind();
        let mut out: Vec<FieldValue> = Vec::new();
        for item in items {
            let parsed = match kind {
                FieldKind::Modules => self.modules(item, family),
                _ => match as_number(item) {
                    Some(v) if kind.accepts(v) && integer_ok(kind, item) => {
                        Ok(FieldValue::Number(v))
                    }
                    _ => Err(format!("{item} is not a valid {}", field.as_str())),
                },
            };
            match parsed {
                Ok(v) if out.contains(&v) => self.error(
                    Some(at.clone()),
                    path,
                    format!("duplicate value {v}"),
                    "each value once",
                ),
                Ok(v) => out.push(v),
                Err(message) => {
                    let accepted = match kind {
                        FieldKind::Modules => {
                            format!(
                                "lists of {}",
                                defaults::known_target_modules(family).join(", ")
                            )
                        }
                        _ => kind.describe(),
                    };
                    self.error(Some(at.clone()), path, message, &accepted);
                }
            }
        }
        out
    }

    fn modules(&mut self, item: &toml::Value, family: ModelFamily) -> Result<FieldValue, String> {
        let known = defaults::known_target_modules(family);
        let Some(list) = item.as_array() else {
            return Err(format!("{item} is not a list of module names"));
        };
        let mut names: Vec<String> = Vec::new();
        for module in list {
            match module.as_str() {
                Some(name) if known.contains(&name) && !names.iter().any(|n| n == name) => {
                    names.push(name.to_owned())
                }
                Some(name) if known.contains(&name) => {
                    return Err(format!("duplicate target module {name:?}"));
                }
                _ => {
                    return Err(format!(
                        "{module} is not a target module of this model family"
                    ));
                }
            }
        }
        if names.is_empty() {
            return Err("an empty list of target modules".into());
        }
        Ok(FieldValue::Modules(names))
    }

    fn selection(&mut self, raw: &S<String>, evaluation: &EvaluationSpec) -> Selection {
        let Some(name) = raw else {
            return Selection::ValLoss;
        };
        let key = name.get_ref().as_str();
        if key == "val_loss" {
            return Selection::ValLoss;
        }
        let path = format!("{PREFIX}.select");
        match Selection::metric_of(key) {
            None => self.error(
                Some(name.span()),
                &path,
                format!("unknown selection metric {key:?}"),
                Selection::ACCEPTED,
            ),
            Some(metric) if !evaluation.metrics.contains(&metric) => self.error(
                Some(name.span()),
                &path,
                format!("{key} needs the {metric:?} metric, which evaluation.metrics leaves out"),
                "a score of a metric in evaluation.metrics, or val_loss",
            ),
            Some(_) => {}
        }
        Selection::Score(key.to_owned())
    }

    fn asha(&mut self, asha: &RawAsha, at: Range<usize>, stage: &StageSpec) -> Option<AshaSpec> {
        let path = |name: &str| format!("{PREFIX}.asha.{name}");
        let Some(grace) = &asha.grace_period else {
            self.error(
                Some(at),
                &path("grace_period"),
                "missing (required)",
                "optimizer steps before the first rung, a multiple of the stage's eval_every",
            );
            return None;
        };
        let grace_period = *grace.get_ref();
        let every = stage.training.eval_every;
        if grace_period == 0 || !grace_period.is_multiple_of(every) {
            self.error(
                Some(grace.span()),
                &path("grace_period"),
                format!("{grace_period} is not a positive multiple of eval_every ({every}): rungs compare validation losses"),
                &format!("a multiple of {every}"),
            );
        }
        let reduction_factor = value(&asha.reduction_factor, 3);
        if reduction_factor < 2 {
            self.error(
                span(&asha.reduction_factor),
                &path("reduction_factor"),
                format!("must be at least 2, got {reduction_factor}"),
                "an integer >= 2",
            );
        }
        Some(AshaSpec {
            grace_period,
            reduction_factor,
        })
    }
}

fn fields_given(sweep: &RawTrainingSweep) -> bool {
    sweep
        .space
        .as_ref()
        .is_some_and(|s| !s.get_ref().is_empty())
        || sweep
            .points
            .as_ref()
            .is_some_and(|p| !p.get_ref().is_empty())
}

fn as_number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Whole-number fields take TOML integers only (`8`, not `8.5` or `"8"`).
fn integer_ok(kind: FieldKind, item: &toml::Value) -> bool {
    !matches!(kind, FieldKind::Integer { .. }) || matches!(item, toml::Value::Integer(_))
}

fn sorted(fields: &[TrainField]) -> Vec<TrainField> {
    let mut out = fields.to_vec();
    out.sort();
    out
}

fn names(fields: &[TrainField]) -> String {
    fields
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
