//! Adapters in Hugging Face PEFT's format: `adapter_config.json` plus `adapter_model.safetensors` with PEFT's
//! tensor names (`base_model.model.<module path>.lora_A.weight`), so adapters move between Tandem and PEFT.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};
use super::lora::LoraConfig;
use super::model::LanguageModel;
use super::tensor_io;

pub use tandem_experiments::planner::artifacts::{
    ADAPTER_CONFIG as CONFIG_FILE, ADAPTER_WEIGHTS as WEIGHTS_FILE,
};

/// The fields of PEFT's `adapter_config.json` Tandem writes and reads (PEFT fills the rest with its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks / alphas and layer subsets: PEFT features Tandem does not implement; must be empty.
    #[serde(default, skip_serializing)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing)]
    pub alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing)]
    pub layers_to_transform: Option<serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}

/// PEFT stores target modules as a list, or as one regular-expression string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl AdapterConfig {
    /// The LoRA settings this adapter was trained with.
    pub fn lora_config(&self, path: &Path) -> Result<LoraConfig> {
        let targets = match &self.target_modules {
            TargetModules::List(l) => l.clone(),
            TargetModules::Regex(r) => {
                return Err(EngineError::adapter(
                    path,
                    format!(
                        "target_modules is the regular expression {r:?}; accepted: a list of module names"
                    ),
                ));
            }
        };
        Ok(LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: targets,
        })
    }

    fn check_supported(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(EngineError::config(path, key, msg));
        if self.peft_type != "LORA" {
            return bad(
                "peft_type",
                format!("{:?}; accepted: \"LORA\"", self.peft_type),
            );
        }
        if self.bias != "none" {
            return bad("bias", format!("{:?}; accepted: \"none\"", self.bias));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "true; accepted: false".into());
        }
        if self.use_rslora {
            return bad(
                "use_rslora",
                "true; accepted: false (scale alpha / r)".into(),
            );
        }
        if self.use_dora {
            return bad("use_dora", "true; accepted: false".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad("modules_to_save", "not empty; accepted: none".into());
        }
        if self.r == 0 {
            return bad("r", "0; accepted: at least 1".into());
        }
        if self.rank_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad(
                "rank_pattern",
                "not empty; accepted: one rank for every module".into(),
            );
        }
        if self.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad(
                "alpha_pattern",
                "not empty; accepted: one alpha for every module".into(),
            );
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return bad(
                "layers_to_transform",
                "set; accepted: null (all layers)".into(),
            );
        }
        Ok(())
    }
}

/// PEFT's tensor name of a module's LoRA matrix (`"A"` or `"B"`).
pub fn tensor_name(module_path: &str, which: &str) -> String {
    format!("base_model.model.{module_path}.lora_{which}.weight")
}

/// Writes the model's LoRA updates as a PEFT adapter into `dir` (created if missing).
pub fn save(model: &dyn LanguageModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    for layer in model.linears() {
        let Some(lora) = layer.lora() else { continue };
        for (which, var) in [("A", &lora.a), ("B", &lora.b)] {
            let t = var.as_tensor();
            tensors.push((
                tensor_name(&layer.path, which),
                t.dims().to_vec(),
                t.flatten_all()?.to_vec1::<f32>()?,
            ));
        }
    }
    save_tensors(
        model.peft_task_type(),
        model.base_name(),
        config,
        &tensors,
        dir,
    )
}

/// One named tensor of an adapter: PEFT name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes a PEFT adapter from its tensors (PEFT names, see [`tensor_name`]) into `dir` (created if missing):
/// what every engine's adapter output goes through.
pub fn save_tensors(
    task_type: &str,
    base_name: &str,
    config: &LoraConfig,
    tensors: &[NamedTensor],
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    if tensors.is_empty() {
        return Err(EngineError::Input(
            "the model has no LoRA layers to save".into(),
        ));
    }
    let mut targets = config.target_modules.clone();
    targets.sort();
    targets.dedup();
    let adapter_config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some(task_type.into()),
        r: config.r,
        lora_alpha: config.alpha,
        lora_dropout: config.dropout,
        target_modules: TargetModules::List(targets),
        base_model_name_or_path: Some(base_name.into()),
        bias: "none".into(),
        fan_in_fan_out: false,
        inference_mode: true,
        use_rslora: false,
        use_dora: false,
        modules_to_save: None,
        rank_pattern: None,
        alpha_pattern: None,
        layers_to_transform: None,
    };
    let json = serde_json::to_string_pretty(&adapter_config).expect("adapter config serialises");
    let cfg_path = dir.join(CONFIG_FILE);
    super::files::write(&cfg_path, (json + "\n").as_bytes())?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    tensor_io::write_f32(&dir.join(WEIGHTS_FILE), tensors, Some(metadata))
}

/// Reads `adapter_config.json` of an adapter folder.
pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let config: AdapterConfig = serde_json::from_str(&text)
        .map_err(|e| EngineError::adapter(&path, format!("not a PEFT LoRA adapter config: {e}")))?;
    config.check_supported(&path)?;
    Ok(config)
}

fn last_component(name: &str) -> &str {
    name.trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
}

/// Loads a PEFT adapter from `dir` into `model` (replacing any LoRA updates it has). The adapter must fit this
/// model (task type, targeted modules and every tensor's shape; a differently named base only warns, as in PEFT)
/// and, when `expected_r` is given, have that rank. Returns its LoRA settings.
pub fn load(
    model: &mut dyn LanguageModel,
    dir: &Path,
    expected_r: Option<usize>,
) -> Result<LoraConfig> {
    let modules: Vec<ModuleShape> = model
        .linears()
        .iter()
        .map(|l| ModuleShape {
            path: l.path.clone(),
            in_features: l.in_features,
            out_features: l.out_features,
        })
        .collect();
    let (lora, adapters) = read_adapter(
        dir,
        expected_r,
        model.peft_task_type(),
        model.base_name(),
        &modules,
    )?;
    let scale = lora.scale();
    for layer in model.linears_mut() {
        layer.clear_lora();
        let Some(ad) = adapters.iter().find(|a| a.path == layer.path) else {
            continue;
        };
        let ta = Tensor::from_vec(ad.a.clone(), (lora.r, layer.in_features), &Device::Cpu)?;
        let tb = Tensor::from_vec(ad.b.clone(), (layer.out_features, lora.r), &Device::Cpu)?;
        layer.set_lora(ta, tb, scale, lora.dropout)?;
    }
    Ok(lora)
}

/// A linear module an adapter may target: its path and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleShape {
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// One module's adapter values as read from a PEFT adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleAdapter {
    pub path: String,
    /// `r x in`.
    pub a: Vec<f32>,
    /// `out x r`.
    pub b: Vec<f32>,
}

/// Reads and checks a PEFT adapter in `dir` against a model's modules (a differently named base only warns): the
/// rank (`expected_r`), the task type, every targeted module's tensors and their shapes, and no stray tensor.
/// Returns the adapter's LoRA settings and the values of every targeted module, in `modules` order.
pub fn read_adapter(
    dir: &Path,
    expected_r: Option<usize>,
    task_type: &str,
    base_name: &str,
    modules: &[ModuleShape],
) -> Result<(LoraConfig, Vec<ModuleAdapter>)> {
    let cfg_path = dir.join(CONFIG_FILE);
    let config = read_config(dir)?;
    let lora = config.lora_config(&cfg_path)?;
    // As PEFT does, a differently named base is no refusal (models are renamed, copied, converted to GGUF):
    // the architecture and every tensor's shape below decide.
    if let Some(base) = config
        .base_model_name_or_path
        .as_deref()
        .filter(|b| !b.is_empty())
        && last_component(base) != last_component(base_name)
    {
        tracing::warn!(
            adapter = %cfg_path.display(),
            adapter_base = base,
            loaded_base = base_name,
            "the adapter names another base model; it loads if every tensor's shape matches"
        );
    }
    if let Some(r) = expected_r.filter(|&r| r != config.r) {
        return Err(EngineError::adapter(
            &cfg_path,
            format!("r is {}, the manifest's lora.r is {r}", config.r),
        ));
    }
    if let Some(task) = config.task_type.as_deref().filter(|t| *t != task_type) {
        return Err(EngineError::adapter(
            &cfg_path,
            format!("task_type is {task:?}, this model is {task_type:?}"),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let mut tensors = tensor_io::read_all_f32(&weights_path)?;
    // PEFT may also store names with the adapter name (".lora_A.default.weight"); normalise those.
    let keys: Vec<String> = tensors.keys().cloned().collect();
    for k in keys {
        if k.contains(".default.weight") {
            let v = tensors.remove(&k).expect("key exists");
            tensors.insert(k.replace(".default.weight", ".weight"), v);
        }
    }
    let mut adapters = Vec::new();
    for m in modules.iter().filter(|m| lora.targets(&m.path)) {
        let (na, nb) = (tensor_name(&m.path, "A"), tensor_name(&m.path, "B"));
        let (Some(a), Some(b)) = (tensors.get(&na), tensors.get(&nb)) else {
            return Err(EngineError::adapter(
                &weights_path,
                format!("missing tensor `{na}` or `{nb}`"),
            ));
        };
        let expect_a = [config.r, m.in_features];
        let expect_b = [m.out_features, config.r];
        if a.0 != expect_a || b.0 != expect_b {
            return Err(EngineError::adapter(
                &weights_path,
                format!(
                    "`{na}` is {:?} and `{nb}` is {:?}; this model with r={} needs {expect_a:?} and {expect_b:?}",
                    a.0, b.0, config.r
                ),
            ));
        }
        adapters.push(ModuleAdapter {
            path: m.path.clone(),
            a: a.1.clone(),
            b: b.1.clone(),
        });
    }
    if adapters.len() * 2 != tensors.len() {
        let known: BTreeMap<String, ()> = modules
            .iter()
            .flat_map(|m| [tensor_name(&m.path, "A"), tensor_name(&m.path, "B")])
            .map(|n| (n, ()))
            .collect();
        let stray = tensors
            .keys()
            .find(|k| !known.contains_key(*k))
            .cloned()
            .unwrap_or_default();
        return Err(EngineError::adapter(
            &weights_path,
            format!(
                "tensor `{stray}` names no targeted module of this model (is it for another architecture?)"
            ),
        ));
    }
    if adapters.is_empty() {
        return Err(EngineError::adapter(
            &weights_path,
            "no LoRA tensor matches this model's modules",
        ));
    }
    Ok((lora, adapters))
}
