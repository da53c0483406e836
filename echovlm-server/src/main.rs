//! `echovlm-server`: serves one EchoVLM checkpoint over an OpenAI-compatible HTTP API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use echovlm_pipeline::{
    EchoVlm, HubId, LoadOptions, Weights, device_from_name, dtype_for, probe_device,
};
use echovlm_server::{Server, ServerConfig, shutdown_signal};

/// Serve an EchoVLM checkpoint over an OpenAI-compatible API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The checkpoint: a directory, or a Hugging Face Hub id `org/name[@revision]` (any
    /// string that is not an existing path and has that shape), downloaded into the Hugging
    /// Face cache while the server starts (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and
    /// HF_HUB_OFFLINE=1 apply).
    #[arg(long)]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Name the API gives the model (default: the directory's name, or the hub id's
    /// `org/name`).
    #[arg(long)]
    model_name: Option<String>,
    /// Most requests waiting for the model; more are answered 503.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Most requests decoded together (they join and leave the running batch between steps).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 16)]
    max_images: usize,
    /// Bearer token required on /v1/ routes.
    #[arg(long, env = "ECHOVLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Lets image_url name files under this directory.
    #[arg(long)]
    allow_local_files: Option<PathBuf>,
    /// Refused: this server never fetches http(s) image URLs. Without the flag such URLs are
    /// answered 400 (`remote_url_refused`); with it the server does not start, saying why.
    #[arg(long)]
    allow_remote_images: bool,
    /// cpu, wgpu, cuda or cuda:N (a GPU needs the server built with its feature: `--features
    /// wgpu` or `--features cuda`).
    #[arg(long, env = "ECHOVLM_DEVICE", default_value = "cpu")]
    device: String,
    /// Float type of activations (and of the weights off the CPU): f32, f16 or bf16 (bf16 for a
    /// GPU serving the released model).
    #[arg(long, env = "ECHOVLM_DTYPE", default_value = "f32")]
    dtype: String,
    /// On the CPU, how linear weights are kept: auto (the checkpoint's storage type, or int8,
    /// then int4, when that would not fit in the available memory), f32, bf16, int8, int4 or
    /// portable.
    #[arg(long, default_value = "auto")]
    weights: String,
    /// Threads of the CPU path (default: RAYON_NUM_THREADS when set, else the physical cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// The load options the arguments ask for, the device probed: a device this build lacks, a
/// GPU that is not there, or an unknown float type or weight format is refused here, before the
/// server listens.
fn load_options(args: &Args) -> Result<LoadOptions, String> {
    let device =
        device_from_name(&args.device).map_err(|e| format!("--device {}: {e}", args.device))?;
    probe_device(&device).map_err(|e| format!("--device {}: {e}", args.device))?;
    let (dtype, note) =
        dtype_for(&device, &args.dtype).map_err(|e| format!("--dtype {}: {e}", args.dtype))?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let weights: Weights = args
        .weights
        .parse()
        .map_err(|e| format!("--weights {}: {e}", args.weights))?;
    Ok(LoadOptions::default()
        .device(device)
        .dtype(dtype)
        .weights(weights)
        .threads(args.threads))
}

/// Why `--allow-remote-images` is refused.
const NO_REMOTE_IMAGES: &str = "--allow-remote-images is not supported: this server never \
    fetches image URLs, because a server that downloads URLs its clients name can be steered at \
    internal addresses (SSRF) and ties its latency and memory to other hosts. Send images as \
    base64 data: URIs, or let the server read files under --allow-local-files DIR.";

fn main() -> ExitCode {
    let args = Args::parse();
    if args.allow_remote_images {
        eprintln!("error: {NO_REMOTE_IMAGES}");
        return ExitCode::from(2);
    }
    let load = match load_options(&args) {
        Ok(load) => load,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let hub = HubId::from_model_arg(&args.model);
    let name = args.model_name.clone().unwrap_or_else(|| match &hub {
        Some(id) => id.repo.clone(),
        None => Path::new(&args.model)
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "echovlm".into()),
    });
    let config = ServerConfig::default()
        .model_name(name)
        .max_queue(args.max_queue)
        .max_batch(args.max_batch)
        .max_body_bytes(args.max_body_bytes)
        .max_images(args.max_images)
        .api_key(args.api_key.clone())
        .allow_local_files(args.allow_local_files.clone());
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        eprintln!(
            "echovlm-server: serving {} ({}, {:?}) on http://{}",
            args.model,
            args.device,
            load.dtype,
            listener.local_addr()?
        );
        let model_arg = args.model.clone();
        let server = Server::loading(config, move || {
            let start = std::time::Instant::now();
            let model = match hub {
                Some(id) => EchoVlm::load_pretrained(&id.to_string(), &load)?,
                None => EchoVlm::load(&model_arg, &load)?,
            };
            eprintln!(
                "echovlm-server: model loaded in {:.1} s ({}); ready",
                start.elapsed().as_secs_f64(),
                model.weight_choice()
            );
            Ok(model)
        });
        server.serve(listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => {
            eprintln!("echovlm-server: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
