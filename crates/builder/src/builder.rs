//! The build itself: walks the instructions, keeps the image config as it grows, and turns COPY,
//! ADD and RUN into layers (through the cache when it can), then commits and tags the image.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_api::Digest;
use oci_spec::image::{Config, Descriptor, History, ImageConfiguration};

use crate::cache::{self, Cache};
use crate::context::{CopyPlan, EntryOptions};
use crate::dockerfile::{
    Command, Copy, Dockerfile, Instruction, InstructionKind, MAX_DOCKERFILE_SIZE, RunMount,
};
use crate::error::{Error, Result};
use crate::ignore::Ignore;
use crate::workspace::Workspace;
use berth_image::Reference;
use berth_image::manifest::canonical_json;
use berth_image::store::{ImageStore, Layer, MAX_LAYERS};
use berth_namespaces::user::resolve_user;

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile; `<context>/Dockerfile` when `None`.
    pub dockerfile: Option<PathBuf>,
    /// Names to tag the result with.
    pub tags: Vec<Reference>,
    /// `--build-arg KEY=VALUE` values.
    pub build_args: BTreeMap<String, String>,
    /// Ignore the layer cache (layers are still recorded in it).
    pub no_cache: bool,
    /// The timestamp (seconds since the epoch) written into every layer entry; `0` by default,
    /// `SOURCE_DATE_EPOCH` is the usual source. Fixed, so builds are reproducible.
    pub timestamp: u64,
    /// Set it to stop the build (the `berth` binary does on SIGINT and SIGTERM).
    pub cancel: crate::Cancel,
    /// The stage to build (`--target`); the last one when `None`. Stages it does not need are
    /// skipped.
    pub target: Option<String>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The image manifest (tagged with every requested name).
    pub manifest: Descriptor,
    /// Its digest (`sha256:…`): equal for equal inputs.
    pub digest: Digest,
    /// The image id: its config's digest.
    pub config_digest: Digest,
    /// Steps (instructions) carried out.
    pub steps: usize,
    /// Layers taken from the cache.
    pub cached_layers: usize,
    /// Layers created by this build.
    pub new_layers: usize,
}

/// Builds images from Dockerfiles into an [`ImageStore`].
#[derive(Debug)]
pub struct Builder {
    /// `RUN --mount=type=cache` directories (`<cache_dir>/mounts/<id digest>`).
    cache_mounts: PathBuf,
    store: ImageStore,
    workspace: Workspace,
    cache: Cache,
}

/// Blobs a build wrote to the content store, removed again if the build fails and nothing
/// (no image, no layer-cache entry) refers to them.
type Written = std::sync::Arc<std::sync::Mutex<Vec<Digest>>>;

/// The largest image config a build makes (bytes): what the store reads back
/// ([`berth_image::content::MAX_JSON_SIZE`]) less room for the layer list written at commit.
pub const MAX_CONFIG_SIZE: u64 = berth_image::content::MAX_JSON_SIZE - (256 << 10);

/// Whether `config` serialises to at most [`MAX_CONFIG_SIZE`] bytes; stops counting (and
/// serialising) as soon as it is over.
fn config_fits(config: &ImageConfiguration) -> bool {
    struct Counter(u64);
    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            if self.0 > MAX_CONFIG_SIZE {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter(0), config).is_ok()
}

/// Reads the Dockerfile, refusing one over [`MAX_DOCKERFILE_SIZE`] before reading it.
fn read_dockerfile(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let too_large = || Error::TooLarge {
        what: format!("the Dockerfile {}", path.display()),
        limit: MAX_DOCKERFILE_SIZE,
    };
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    if size > MAX_DOCKERFILE_SIZE {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(MAX_DOCKERFILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(Error::io("read", path))?;
    if text.len() as u64 > MAX_DOCKERFILE_SIZE {
        return Err(too_large());
    }
    Ok(text)
}

/// The instruction as shown in progress lines: cut after 200 characters.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]).into(),
        None => text.into(),
    }
}

/// One stage of a (multi-stage) Dockerfile: instructions `first` (its FROM) to `end`.
struct Stage {
    first: usize,
    end: usize,
    name: Option<String>,
    base: StageRef,
    /// The stages it needs (FROM, COPY --from, RUN --mount from).
    deps: BTreeSet<usize>,
    /// Every `--from` value of its steps, resolved.
    from_refs: BTreeMap<String, StageRef>,
}

/// A stage's FROM or a `--from`: an earlier stage or an image.
enum StageRef {
    Stage(usize),
    Image(String),
}

/// What building a stage gave.
struct StageOutput {
    state: State,
    cached: usize,
    new: usize,
    consumed: BTreeSet<String>,
}

/// The image as it grows.
#[derive(Clone)]
struct State {
    /// The layers of the stages this one copies from, by the `--from` value naming them.
    from_layers: BTreeMap<String, Vec<Layer>>,
    written: Written,
    config: ImageConfiguration,
    layers: Vec<Layer>,
    /// ARGs declared in this stage, with their values (None: declared without value).
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    cmd_set: bool,
}

impl State {
    fn run_config(&self) -> &Config {
        static EMPTY: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
        self.config
            .config()
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Config::default))
    }

    /// Changes the run config (`config.config`), creating it when the image has none.
    fn update_config(&mut self, change: impl FnOnce(&mut Config)) {
        let mut config = self.config.config().clone().unwrap_or_default();
        change(&mut config);
        self.config.set_config(Some(config));
    }

    fn env(&self) -> Vec<String> {
        self.run_config().env().clone().unwrap_or_default()
    }

    fn env_value(&self, name: &str) -> Option<String> {
        berth_namespaces::process::env_value(&self.env(), name).map(str::to_owned)
    }

    /// Variables visible to expansion: ENV wins over ARG (as in Docker).
    fn lookup(&self, name: &str) -> Option<String> {
        self.env_value(name)
            .or_else(|| self.args.get(name).cloned().flatten())
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        berth_namespaces::process::set_env(&mut env, format!("{key}={value}"));
        self.update_config(|c| {
            c.set_env(Some(env));
        });
    }

    fn workdir(&self) -> String {
        self.run_config()
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    fn history(&mut self, created_by: &str, empty_layer: bool) {
        let mut entry = History::default();
        entry.set_created_by(Some(created_by.to_owned()));
        entry.set_comment(Some("berth.build.v1".to_owned()));
        if empty_layer {
            entry.set_empty_layer(Some(true));
        }
        let mut history = self.config.history().clone().unwrap_or_default();
        history.push(entry);
        self.config.set_history(Some(history));
    }

    /// The digest of everything built so far: the parent part of each cache key.
    fn digest(&self) -> Result<Digest> {
        let mut config = self.config.clone();
        let mut rootfs = config.rootfs().clone();
        rootfs.set_diff_ids(self.layers.iter().map(|l| l.diff_id.to_string()).collect());
        config.set_rootfs(rootfs);
        let bytes =
            canonical_json(&config, "image config").map_err(|e| Error::Image(Box::new(e)))?;
        Ok(Digest::sha256(&bytes))
    }
}

fn image_err(e: berth_image::Error) -> Error {
    Error::Image(Box::new(e))
}

impl Builder {
    /// A builder over `store`, running RUN steps and making layers in `workspace`, with its
    /// layer cache in `cache_dir`.
    pub fn new(store: ImageStore, workspace: Workspace, cache_dir: &Path) -> Result<Builder> {
        let cache = Cache::open(cache_dir).map_err(Error::io("create", cache_dir))?;
        workspace.collect_leftovers();
        Ok(Builder {
            cache_mounts: cache_dir.join("mounts"),
            store,
            workspace,
            cache,
        })
    }

    /// The image store images are built into.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Builds the image `options` describe, writing one progress line per step (and RUN
    /// output) to `progress`.
    ///
    /// A failed build leaves no blob behind that neither an image nor the layer cache refers
    /// to (the layers of the steps that succeeded stay, as cache).
    pub fn build(&self, options: &BuildOptions, progress: &mut dyn Write) -> Result<BuildOutput> {
        let written = Written::default();
        let result = self.build_inner(options, progress, &written);
        if result.is_err() {
            self.remove_unreferenced(&written);
        }
        result
    }

    /// Deletes the blobs in `written` that no image and no cache entry refers to.
    fn remove_unreferenced(&self, written: &Written) {
        let written = std::mem::take(&mut *written.lock().unwrap_or_else(|e| e.into_inner()));
        if written.is_empty() {
            return;
        }
        let (Ok(referenced), Ok(cached)) = (self.store.referenced(), self.cache.blobs()) else {
            return; // when in doubt, keep
        };
        for digest in written {
            if !referenced.contains(&digest) && !cached.contains(&digest) {
                let _ = self.store.content().delete(&digest);
            }
        }
    }

    fn build_inner(
        &self,
        options: &BuildOptions,
        progress: &mut dyn Write,
        written: &Written,
    ) -> Result<BuildOutput> {
        let started = Instant::now();
        let dockerfile_path = options
            .dockerfile
            .clone()
            .unwrap_or_else(|| options.context.join("Dockerfile"));
        let text = read_dockerfile(&dockerfile_path)?;
        let dockerfile = Dockerfile::parse(&text)?;
        drop(text);
        let ignore = Ignore::load(&options.context)?;
        let _lease = self.store.lease().map_err(image_err)?;

        let total = dockerfile.instructions.len();
        let instructions = &dockerfile.instructions;
        let mut global_args: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut consumed: BTreeSet<String> = BTreeSet::new();
        let say = |progress: &mut dyn Write, line: String| {
            let _ = writeln!(progress, "{line}");
        };

        // ARGs before the first FROM, then the stages: each from its FROM to the next.
        let mut stages: Vec<Stage> = Vec::new();
        for (index, ins) in instructions.iter().enumerate() {
            match &ins.kind {
                InstructionKind::From { name, .. } => {
                    if let Some(last) = stages.last_mut() {
                        last.end = index;
                    }
                    stages.push(Stage {
                        first: index,
                        end: total,
                        name: name.clone(),
                        base: StageRef::Image(String::new()),
                        deps: BTreeSet::new(),
                        from_refs: BTreeMap::new(),
                    });
                }
                InstructionKind::Arg(list) if stages.is_empty() => {
                    say(
                        progress,
                        format!("Step {}/{total} : {}", index + 1, shown(&ins.text)),
                    );
                    for (name, default) in list {
                        let value = options.build_args.get(name).cloned().or_else(|| {
                            default
                                .as_ref()
                                .map(|w| w.expand(&|n| global_args.get(n).cloned().flatten()))
                        });
                        consumed.insert(name.clone());
                        global_args.insert(name.clone(), value);
                    }
                }
                _ => {}
            }
        }
        let global = |n: &str| global_args.get(n).cloned().flatten();
        // What each stage starts from and copies from: earlier stages (by name or index) or
        // images.
        for i in 0..stages.len() {
            let resolve = |reference: &str| -> StageRef {
                let lower = reference.to_ascii_lowercase();
                stages[..i]
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                    .or_else(|| reference.parse::<usize>().ok().filter(|n| *n < i))
                    .map_or_else(|| StageRef::Image(reference.to_owned()), StageRef::Stage)
            };
            let InstructionKind::From { image, .. } = &instructions[stages[i].first].kind else {
                unreachable!("a stage starts with FROM");
            };
            let base = resolve(&image.expand(&global));
            let mut from_refs = BTreeMap::new();
            for ins in &instructions[stages[i].first + 1..stages[i].end] {
                let mut refs: Vec<String> = Vec::new();
                match &ins.kind {
                    InstructionKind::Copy(copy) => {
                        refs.extend(copy.from.iter().map(|w| w.expand(&global)))
                    }
                    InstructionKind::Run(_, mounts) => {
                        refs.extend(mounts.iter().filter_map(|m| match m {
                            RunMount::Bind { from, .. } => from.clone(),
                            _ => None,
                        }))
                    }
                    _ => {}
                }
                for r in refs {
                    let target = resolve(&r);
                    from_refs.insert(r, target);
                }
            }
            let stage = &mut stages[i];
            stage.deps = from_refs
                .values()
                .chain([&base])
                .filter_map(|r| match r {
                    StageRef::Stage(j) => Some(*j),
                    StageRef::Image(_) => None,
                })
                .collect();
            stage.base = base;
            stage.from_refs = from_refs;
        }
        let target = match &options.target {
            None => stages.len() - 1,
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                    .ok_or_else(|| Error::Target(t.clone()))?
            }
        };
        // Only the stages the target needs, built in waves: every stage whose dependencies are
        // built starts at once (each on its own thread when there are several).
        let mut needed = vec![false; stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !needed[i] {
                needed[i] = true;
                todo.extend(stages[i].deps.iter().copied());
            }
        }
        for (i, stage) in stages.iter().enumerate() {
            if !needed[i] {
                say(
                    progress,
                    format!(
                        "Skipping stage {} (line {}): the target does not need it",
                        stage.name.clone().unwrap_or_else(|| i.to_string()),
                        instructions[stage.first].line
                    ),
                );
            }
        }
        let mut results: Vec<Option<State>> = vec![None; stages.len()];
        let mut cached_layers = 0;
        let mut new_layers = 0;
        while results[target].is_none() {
            let wave: Vec<usize> = (0..stages.len())
                .filter(|&i| {
                    needed[i]
                        && results[i].is_none()
                        && stages[i].deps.iter().all(|d| results[*d].is_some())
                })
                .collect();
            let outputs: Vec<Result<StageOutput>> = if wave.len() == 1 {
                vec![self.build_stage(
                    &stages[wave[0]],
                    instructions,
                    &results,
                    options,
                    &ignore,
                    &global_args,
                    written,
                    progress,
                )]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = wave
                        .iter()
                        .map(|&i| {
                            let (stages, results, ignore, global_args) =
                                (&stages, &results, &ignore, &global_args);
                            scope.spawn(move || {
                                let mut buffer = Vec::new();
                                let out = self.build_stage(
                                    &stages[i],
                                    instructions,
                                    results,
                                    options,
                                    ignore,
                                    global_args,
                                    written,
                                    &mut buffer,
                                );
                                (out, buffer)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            let (out, buffer) = h.join().map_err(|_| Error::Step {
                                step: 0,
                                line: 0,
                                instruction: String::new(),
                                message: "a stage's thread panicked".into(),
                            })?;
                            let _ = progress.write_all(&buffer);
                            out
                        })
                        .collect()
                })
            };
            for (i, out) in wave.into_iter().zip(outputs) {
                let out = out?;
                cached_layers += out.cached;
                new_layers += out.new;
                consumed.extend(out.consumed);
                results[i] = Some(out.state);
            }
        }
        let state = results[target].take().expect("the target was built");

        let unused: Vec<&String> = options
            .build_args
            .keys()
            .filter(|k| !consumed.contains(*k))
            .collect();
        if !unused.is_empty() {
            say(
                progress,
                format!("[Warning] One or more build-args {unused:?} were not consumed"),
            );
        }

        let manifest = self
            .store
            .commit_image(state.config.clone(), &state.layers)
            .map_err(image_err)?;
        let manifest_digest =
            berth_image::manifest::descriptor_digest(&manifest).map_err(image_err)?;
        written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(manifest_digest);
        let image = self.store.load(&manifest).map_err(image_err)?;
        let config_digest = image.id().map_err(image_err)?;
        written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(config_digest.clone());
        let digest: Digest =
            manifest
                .digest()
                .to_string()
                .parse()
                .map_err(|e: berth_api::DigestError| Error::Step {
                    step: total,
                    line: 0,
                    instruction: "commit".into(),
                    message: e.to_string(),
                })?;
        for tag in &options.tags {
            self.store.tag(tag, &manifest).map_err(image_err)?;
        }
        // Keep the snapshot chain of the result, so running it needs no unpack.
        self.workspace.ensure_chain(&self.store, &state.layers)?;
        say(
            progress,
            format!(
                "Successfully built {} in {:.0?}",
                short(&config_digest),
                started.elapsed()
            ),
        );
        for tag in &options.tags {
            say(progress, format!("Successfully tagged {}", tag.familiar()));
        }
        Ok(BuildOutput {
            manifest,
            digest,
            config_digest,
            steps: total,
            cached_layers,
            new_layers,
        })
    }

    /// Builds one stage: its FROM (an image or an earlier stage's result) and its steps.
    #[allow(clippy::too_many_arguments)]
    fn build_stage(
        &self,
        stage: &Stage,
        instructions: &[Instruction],
        results: &[Option<State>],
        options: &BuildOptions,
        ignore: &Ignore,
        global_args: &BTreeMap<String, Option<String>>,
        written: &Written,
        progress: &mut dyn Write,
    ) -> Result<StageOutput> {
        let total = instructions.len();
        let say = |progress: &mut dyn Write, line: String| {
            let _ = writeln!(progress, "{line}");
        };
        let from_ins = &instructions[stage.first];
        let step = stage.first + 1;
        if options.cancel.is_cancelled() {
            return Err(Error::Cancelled { step });
        }
        say(
            progress,
            format!("Step {step}/{total} : {}", shown(&from_ins.text)),
        );
        let mut state = match &stage.base {
            StageRef::Stage(j) => {
                let mut state = results[*j].clone().expect("dependencies are built first");
                state.args.clear();
                state.written = written.clone();
                state
            }
            StageRef::Image(name) => self.from(name, written).map_err(|e| match e {
                Error::Image(inner) => Error::Step {
                    step,
                    line: from_ins.line,
                    instruction: from_ins.text.clone(),
                    message: format!("base image {name:?}: {}", crate::error_chain(&*inner)),
                },
                other => other,
            })?,
        };
        for (name, target) in &stage.from_refs {
            let layers = match target {
                StageRef::Stage(j) => results[*j]
                    .as_ref()
                    .expect("dependencies are built first")
                    .layers
                    .clone(),
                StageRef::Image(_) => continue,
            };
            state.from_layers.insert(name.clone(), layers);
        }
        let mut out = StageOutput {
            state,
            cached: 0,
            new: 0,
            consumed: BTreeSet::new(),
        };
        for (index, ins) in instructions
            .iter()
            .enumerate()
            .take(stage.end)
            .skip(stage.first + 1)
        {
            let step = index + 1;
            if options.cancel.is_cancelled() {
                return Err(Error::Cancelled { step });
            }
            say(
                progress,
                format!("Step {step}/{total} : {}", shown(&ins.text)),
            );
            let cached = self.step(
                &ins.kind,
                ins,
                step,
                &mut out.state,
                options,
                ignore,
                global_args,
                &mut out.consumed,
                progress,
            )?;
            match cached {
                Some(true) => out.cached += 1,
                Some(false) => out.new += 1,
                None => {}
            }
            if !config_fits(&out.state.config) {
                return Err(Error::TooLarge {
                    what: format!("step {step} (line {}): the image config", ins.line),
                    limit: MAX_CONFIG_SIZE,
                });
            }
        }
        Ok(out)
    }

    /// The config and layers of the image `name` (`scratch`: none).
    fn image(&self, name: &str) -> Result<(ImageConfiguration, Vec<Layer>)> {
        if name == "scratch" {
            return Ok((ImageConfiguration::default(), Vec::new()));
        }
        let reference = Reference::parse(name).map_err(image_err)?;
        let image = self.store.image(&reference).map_err(image_err)?;
        let diff_ids = image.diff_ids().map_err(image_err)?;
        let layers = image
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(descriptor, diff_id)| Layer {
                descriptor: descriptor.clone(),
                diff_id,
            })
            .collect();
        let mut config = image.config.clone();
        config.set_created(None);
        Ok((config, layers))
    }

    /// Mounts the filesystem of `--from=reference` (a stage of this build or an image) on a
    /// throw-away snapshot, for COPY --from and RUN --mount=from.
    fn mount_from<'w>(
        &'w self,
        reference: &str,
        state: &State,
    ) -> std::result::Result<crate::workspace::Active<'w>, String> {
        let layers = match state.from_layers.get(reference) {
            Some(layers) => layers.clone(),
            None => {
                self.image(reference)
                    .map_err(|e| format!("--from={reference}: {}", crate::error_chain(&e)))?
                    .1
            }
        };
        let parent = self
            .workspace
            .ensure_chain(&self.store, &layers)
            .map_err(|e| crate::error_chain(&e))?;
        self.workspace
            .begin(parent.as_deref(), 0)
            .map_err(|e| crate::error_chain(&e))
    }

    /// The state after `FROM name`.
    fn from(&self, name: &str, written: &Written) -> Result<State> {
        let (config, layers) = self.image(name)?;
        Ok(State {
            from_layers: BTreeMap::new(),
            written: written.clone(),
            config,
            layers,
            args: BTreeMap::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        })
    }

    /// Carries out one instruction after FROM. Returns `Some(cached)` for layer steps.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        kind: &InstructionKind,
        ins: &Instruction,
        step: usize,
        state: &mut State,
        options: &BuildOptions,
        ignore: &Ignore,
        global_args: &BTreeMap<String, Option<String>>,
        consumed: &mut BTreeSet<String>,
        progress: &mut dyn Write,
    ) -> Result<Option<bool>> {
        let step_err = |message: String| Error::Step {
            step,
            line: ins.line,
            instruction: ins.text.clone(),
            message,
        };
        let st: &State = state;
        let lookup = |n: &str| st.lookup(n);
        match kind {
            InstructionKind::From { .. } => unreachable!("the parser rejects a second FROM"),
            InstructionKind::Arg(list) => {
                for (name, default) in list {
                    let value = options
                        .build_args
                        .get(name)
                        .cloned()
                        .or_else(|| default.as_ref().map(|w| w.expand(&|n| state.lookup(n))))
                        .or_else(|| global_args.get(name).cloned().flatten());
                    consumed.insert(name.clone());
                    state.args.insert(name.clone(), value);
                }
            }
            InstructionKind::Env(pairs) => {
                let values: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, w)| (k.clone(), w.expand(&lookup)))
                    .collect();
                for (k, v) in &values {
                    state.set_env(k, v);
                }
            }
            InstructionKind::Label(pairs) => {
                let values: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, w)| (k.clone(), w.expand(&lookup)))
                    .collect();
                state.update_config(|c| {
                    let mut labels = c.labels().clone().unwrap_or_default();
                    labels.extend(values);
                    c.set_labels(Some(labels));
                });
            }
            InstructionKind::Cmd(cmd) => {
                let args = command_args(cmd, &state.shell);
                state.update_config(|c| {
                    c.set_cmd(Some(args));
                });
                state.cmd_set = true;
            }
            InstructionKind::Entrypoint(cmd) => {
                let args = command_args(cmd, &state.shell);
                let cmd_set = state.cmd_set;
                state.update_config(|c| {
                    c.set_entrypoint(Some(args));
                    if !cmd_set {
                        c.set_cmd(None);
                    }
                });
            }
            InstructionKind::Shell(shell) => state.shell = shell.clone(),
            InstructionKind::Workdir(w) => {
                let dir = w.expand(&lookup);
                let dir = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", state.workdir())
                };
                let cleaned = format!("/{}", clean_in_root(&dir));
                state.update_config(|c| {
                    c.set_working_dir(Some(cleaned));
                });
            }
            InstructionKind::User(w) => {
                let user = w.expand(&lookup);
                if user.is_empty() {
                    return Err(step_err("USER must not be empty".into()));
                }
                state.update_config(|c| {
                    c.set_user(Some(user));
                });
            }
            InstructionKind::Expose(ports) => {
                let mut exposed = state
                    .run_config()
                    .exposed_ports()
                    .clone()
                    .unwrap_or_default();
                for w in ports {
                    let port = normalize_port(&w.expand(&lookup)).map_err(step_err)?;
                    if !exposed.contains(&port) {
                        exposed.push(port);
                    }
                }
                exposed.sort();
                state.update_config(|c| {
                    c.set_exposed_ports(Some(exposed));
                });
            }
            InstructionKind::Volume(paths) => {
                let mut volumes = state.run_config().volumes().clone().unwrap_or_default();
                for w in paths {
                    let path = w.expand(&lookup);
                    if path.is_empty() {
                        return Err(step_err("VOLUME paths must not be empty".into()));
                    }
                    if !volumes.contains(&path) {
                        volumes.push(path);
                    }
                }
                volumes.sort();
                state.update_config(|c| {
                    c.set_volumes(Some(volumes));
                });
            }
            InstructionKind::StopSignal(w) => {
                let signal = w.expand(&lookup);
                state.update_config(|c| {
                    c.set_stop_signal(Some(signal));
                });
            }
            InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                let add = matches!(kind, InstructionKind::Add(_));
                return self
                    .copy(
                        copy,
                        add,
                        ins,
                        step,
                        state,
                        options,
                        ignore,
                        global_args,
                        progress,
                    )
                    .map(Some);
            }
            InstructionKind::Run(cmd, mounts) => {
                return self
                    .run(cmd, mounts, ins, step, state, options, ignore, progress)
                    .map(Some);
            }
        }
        state.history(&ins.text, true);
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        copy: &Copy,
        add: bool,
        ins: &Instruction,
        step: usize,
        state: &mut State,
        options: &BuildOptions,
        ignore: &Ignore,
        global_args: &BTreeMap<String, Option<String>>,
        progress: &mut dyn Write,
    ) -> Result<bool> {
        let from = copy
            .from
            .as_ref()
            .map(|w| w.expand(&|n| global_args.get(n).cloned().flatten()));
        let lookup = |n: &str| state.lookup(n);
        let sources: Vec<String> = copy.sources.iter().map(|w| w.expand(&lookup)).collect();
        let dest = copy.dest.expand(&lookup);
        let chown = copy.chown.as_ref().map(|w| w.expand(&lookup));
        let source_err = |message: String| Error::Source {
            step,
            line: ins.line,
            message,
        };
        // COPY --from reads a stage's or an image's filesystem (no .dockerignore there).
        let source = match &from {
            Some(reference) => Some(self.mount_from(reference, state).map_err(source_err)?),
            None => None,
        };
        let no_ignore = Ignore::default();
        let (source_root, ignore) = match &source {
            Some(active) => (active.root().to_owned(), &no_ignore),
            None => (options.context.clone(), ignore),
        };
        let plan = CopyPlan::new(&source_root, ignore, &sources, add).map_err(source_err)?;
        let content = plan
            .digest()
            .map_err(|e| source_err(format!("reading sources: {e}")))?;
        let dest_abs = if dest.starts_with('/') {
            dest.clone()
        } else {
            format!("{}/{dest}", state.workdir())
        };
        let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
        let canonical = format!(
            "{} chown={} chmod={:?} src={sources:?} dest={dest_abs} dir={dest_is_dir}{}",
            if add { "ADD" } else { "COPY" },
            chown.as_deref().unwrap_or(""),
            copy.chmod,
            // Only when set, so keys of plain COPY steps stay as they were.
            from.as_deref()
                .map_or(String::new(), |f| format!(" from={f}")),
        );
        let key = cache::key(&state.digest()?, &canonical, &[&content.to_string()]);
        let mtime = options.timestamp;
        let multiple = sources.len() > 1
            || !plan.single_file && sources.iter().any(|s| s.contains(['*', '?', '[']));
        self.layer_step(&key, ins, step, state, options, progress, |root, _state| {
            let rel = clean_in_root(&dest_abs);
            let exists_dir = crate::workspace::is_dir_in_root(root, &rel);
            if multiple && !dest_is_dir && !exists_dir {
                return Err(format!(
                    "with more than one source the destination must be a directory and end with a /: {dest}"
                ));
            }
            let as_file = plan.single_file && !dest_is_dir && !exists_dir;
            let (uid, gid) = match &chown {
                Some(user) => {
                    let u = resolve_user(root, user)?;
                    (u.uid, u.gid)
                }
                None => (0, 0),
            };
            let mut dirs = crate::workspace::missing_dirs(root, &rel);
            if as_file {
                dirs.pop_if(|d| *d == rel);
            }
            let opts = EntryOptions { uid: uid.into(), gid: gid.into(), chmod: copy.chmod, mtime };
            Ok((plan_writer(&plan, rel, as_file, dirs, opts), None))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        cmd: &Command,
        run_mounts: &[RunMount],
        ins: &Instruction,
        step: usize,
        state: &mut State,
        options: &BuildOptions,
        ignore: &Ignore,
        progress: &mut dyn Write,
    ) -> Result<bool> {
        let step_err = |message: String| Error::Step {
            step,
            line: ins.line,
            instruction: shown(&ins.text).into_owned(),
            message,
        };
        // RUN --mount: cache directories under the builder's root (kept between builds),
        // read-only binds of the context or a stage, tmpfs. None of it lands in the layer; a
        // bind's content is part of the cache key, a cache mount's is not (as in BuildKit).
        let mut sources = Vec::new();
        let mut mounts = Vec::new();
        let mut mount_keys = Vec::new();
        for m in run_mounts {
            let (target, typ, source, options_list) = match m {
                RunMount::Cache { target, id } => {
                    let dir = self.cache_mounts.join(Digest::sha256(id.as_bytes()).hex());
                    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
                    mount_keys.push(format!("cache {target} {id}"));
                    (target, "bind", dir, vec!["rbind", "rw"])
                }
                RunMount::Tmpfs { target } => {
                    mount_keys.push(format!("tmpfs {target}"));
                    (
                        target,
                        "tmpfs",
                        PathBuf::from("tmpfs"),
                        vec!["nosuid", "nodev", "mode=755"],
                    )
                }
                RunMount::Bind { rw: true, .. } => {
                    return Err(step_err(
                        "RUN --mount=type=bind,rw is not supported (binds are read-only)".into(),
                    ));
                }
                RunMount::Bind {
                    target,
                    source,
                    from,
                    ..
                } => {
                    let root = match from {
                        Some(reference) => {
                            let active = self.mount_from(reference, state).map_err(step_err)?;
                            let root = active.root().to_owned();
                            sources.push(active);
                            root
                        }
                        None => options.context.clone(),
                    };
                    let no_ignore = Ignore::default();
                    let ignore = if from.is_some() { &no_ignore } else { ignore };
                    let resolved = crate::context::resolve_path(&root, source, ignore)
                        .map_err(|e| step_err(format!("--mount source {source:?}: {e}")))?;
                    let content = CopyPlan::new(&root, ignore, std::slice::from_ref(source), false)
                        .and_then(|p| p.digest().map_err(|e| e.to_string()))
                        .map_err(|e| step_err(format!("--mount source {source:?}: {e}")))?;
                    mount_keys.push(format!("bind {target} {from:?} {content}"));
                    (target, "bind", root.join(resolved), vec!["rbind", "ro"])
                }
            };
            let mount = oci_spec::runtime::MountBuilder::default()
                .destination(target)
                .typ(typ)
                .source(source)
                .options(
                    options_list
                        .into_iter()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )
                .build()
                .map_err(|e| step_err(e.to_string()))?;
            mounts.push(mount);
        }
        let args = command_args(cmd, &state.shell);
        // Declared ARGs reach RUN as environment (ENV of the same name wins); they are part of
        // the cache key but not of the image.
        let env_keys: BTreeSet<String> = state
            .env()
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        let arg_env: Vec<String> = state
            .args
            .iter()
            .filter(|(k, v)| v.is_some() && !env_keys.contains(*k))
            .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("")))
            .collect();
        let canonical = if mount_keys.is_empty() {
            format!("RUN {args:?}")
        } else {
            format!("RUN {args:?} mounts={mount_keys:?}")
        };
        let key = cache::key(&state.digest()?, &canonical, &[&arg_env.join("\0")]);
        self.layer_step(&key, ins, step, state, options, progress, |_root, state| {
            let mut env = state.env();
            env.extend(arg_env.iter().cloned());
            let run = crate::workspace::RunSpec {
                args: args.clone(),
                env,
                cwd: state.workdir(),
                user: state.run_config().user().clone().unwrap_or_default(),
                mounts: mounts.clone(),
            };
            Ok((
                Box::new(|_: &mut dyn Write| Ok(())) as TarWriter<'_>,
                Some(run),
            ))
        })
    }

    /// A layer step: a cache hit reuses the layer; a miss prepares a snapshot on the parent,
    /// applies what `prepare` writes (a tar stream) and/or runs what it returns, and diffs the
    /// snapshot into a new layer.
    #[allow(clippy::too_many_arguments)]
    fn layer_step<'p>(
        &self,
        key: &Digest,
        ins: &Instruction,
        step: usize,
        state: &mut State,
        options: &BuildOptions,
        progress: &mut dyn Write,
        prepare: impl FnOnce(
            &Path,
            &State,
        ) -> std::result::Result<
            (TarWriter<'p>, Option<crate::workspace::RunSpec>),
            String,
        >,
    ) -> Result<bool> {
        let step_err = |message: String| Error::Step {
            step,
            line: ins.line,
            instruction: ins.text.clone(),
            message,
        };
        if state.layers.len() >= MAX_LAYERS {
            return Err(step_err(format!(
                "too many layers: this step would add layer {} and an image can have at most \
                 {MAX_LAYERS} (Docker's limit: a container's overlayfs stacks every layer as a \
                 lower directory); merge steps, e.g. one COPY for several files or RUN commands \
                 joined with &&",
                state.layers.len() + 1
            )));
        }
        let hit = if options.no_cache {
            None
        } else {
            self.cache.get(key, self.store.content())
        };
        let (layer, cached) = match hit {
            Some(layer) => {
                let _ = writeln!(progress, " ---> Using cache");
                (layer, true)
            }
            None => {
                let parent = self.workspace.ensure_chain(&self.store, &state.layers)?;
                let active = self.workspace.begin(parent.as_deref(), options.timestamp)?;
                let (tar, run) = prepare(active.root(), state).map_err(step_err)?;
                active
                    .apply(tar)
                    .map_err(|e| step_err(format!("writing files: {e}")))?;
                if let Some(run) = run {
                    let status = active.run(&run, progress, &options.cancel).map_err(|e| {
                        if options.cancel.is_cancelled() {
                            Error::Cancelled { step }
                        } else {
                            step_err(e)
                        }
                    })?;
                    if status != 0 {
                        return Err(Error::RunFailed {
                            step,
                            line: ins.line,
                            instruction: ins.text.clone(),
                            status,
                        });
                    }
                }
                let parent_chain = chain_id(&state.layers);
                let layer = active.finish(&self.store, parent_chain.as_ref(), &state.written)?;
                self.cache
                    .put(key, &layer)
                    .map_err(Error::io("write", "build cache"))?;
                (layer, false)
            }
        };
        let _ = writeln!(progress, " ---> {}", short(&layer.diff_id));
        state.layers.push(layer);
        state.history(&ins.text, false);
        Ok(cached)
    }
}

/// Writes a tar stream (the files a COPY/ADD puts in place).
pub(crate) type TarWriter<'a> = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + 'a>;

fn plan_writer(
    plan: &CopyPlan,
    rel: String,
    as_file: bool,
    dirs: Vec<String>,
    opts: EntryOptions,
) -> TarWriter<'_> {
    Box::new(move |out: &mut dyn Write| plan.write_tar(out, &rel, as_file, &dirs, opts))
}

/// The chain id of `layers` (the key of their top snapshot); `None` for no layers.
pub(crate) fn chain_id(layers: &[Layer]) -> Option<Digest> {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    berth_image::chain_ids(&diff_ids).pop()
}

fn command_args(cmd: &Command, shell: &[String]) -> Vec<String> {
    match cmd {
        Command::Exec(args) => args.clone(),
        Command::Shell(line) => shell.iter().cloned().chain([line.clone()]).collect(),
    }
}

/// `80` -> `80/tcp`; checks the number and protocol.
fn normalize_port(port: &str) -> std::result::Result<String, String> {
    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol in port {port:?}"));
    }
    let valid = |n: &str| n.parse::<u16>().is_ok_and(|n| n > 0);
    let ok = match number.split_once('-') {
        Some((a, b)) => valid(a) && valid(b),
        None => valid(number),
    };
    if !ok {
        return Err(format!("invalid port {port:?}"));
    }
    Ok(format!("{number}/{proto}"))
}

/// Cleans an absolute in-image path lexically to a root-relative one (`/a/../b/` -> `b`).
pub(crate) fn clean_in_root(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_paths() {
        assert_eq!(normalize_port("80").unwrap(), "80/tcp");
        assert_eq!(normalize_port("53/UDP").unwrap(), "53/udp");
        assert_eq!(normalize_port("8000-8010/tcp").unwrap(), "8000-8010/tcp");
        assert!(normalize_port("0").is_err());
        assert!(normalize_port("80/xyz").is_err());
        assert!(normalize_port("http").is_err());
        assert_eq!(clean_in_root("/a/../../b/./c/"), "b/c");
        assert_eq!(clean_in_root("/"), "");
    }

    #[test]
    fn chain_ids() {
        let layer = |s: &[u8]| Layer {
            descriptor: berth_image::manifest::descriptor(
                oci_spec::image::MediaType::ImageLayer,
                &Digest::sha256(s),
                1,
            ),
            diff_id: Digest::sha256(s),
        };
        let (a, b) = (layer(b"a"), layer(b"b"));
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.diff_id.clone()));
        let expected = Digest::sha256(format!("{} {}", a.diff_id, b.diff_id).as_bytes());
        assert_eq!(chain_id(&[a, b]), Some(expected));
    }
}
