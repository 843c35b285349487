//! The two vision models made by scripts/train_shapes.py, through the real
//! binaries: held-out scenes at sizes and aspect ratios other than the
//! model's 64x64 input (160x100, 78x120, 200x140, 110x170), so the
//! letterbox and stretch inverses are really exercised. mAP@0.5 and mean
//! IoU are computed here from the HTTP answers, in the client's pixels,
//! and must match the script's own figures (metrics.json) within 0.02.
//! Then the query parameters, answer formats, v2 tensors, and a model.toml
//! whose declared outputs do not match its model (refused at start).

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use integration_tests::{Gateway, Process, Scratch, root};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn model_dir(name: &str) -> PathBuf {
    let dir = root().join("models").join(name);
    assert!(dir.join("model.pt").exists(), "{} is missing: run scripts/setup first", dir.display());
    dir
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("JSON")
}

async fn serve(scratch: &Scratch, model: &str) -> (Process, Gateway) {
    let host = scratch.start_host(&["--model", &model_dir(model).display().to_string()]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;
    (host, gateway)
}

/// Each held-out scene: its PNG bytes and its truth entry.
fn testset(model: &str) -> Vec<(Vec<u8>, Value)> {
    let dir = model_dir(model).join("testset");
    let truth = read_json(dir.join("truth.json"));
    truth.as_array().expect("a list").iter().map(|t| (std::fs::read(dir.join(t["file"].as_str().unwrap())).unwrap(), t.clone())).collect()
}

async fn post(client: &reqwest::Client, url: String, png: Vec<u8>, accept: Option<&str>) -> reqwest::Response {
    let mut request = client.post(url).header("content-type", "image/png").body(png);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.expect("request")
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}")).to_string())
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

fn corners(v: &Value) -> [f64; 4] {
    let b: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    [b[0], b[1], b[2], b[3]]
}

/// VOC all-point AP@0.5 per class, averaged: as scripts/train_shapes.py.
/// `found[i]`: (box, score, class) per image; `truth[i]`: (box, class).
fn mean_ap(found: &[Vec<([f64; 4], f64, u64)>], truth: &[Vec<([f64; 4], u64)>], classes: u64) -> f64 {
    let mut aps = Vec::new();
    for c in 0..classes {
        let mut dets: Vec<(f64, usize, [f64; 4])> =
            found.iter().enumerate().flat_map(|(i, f)| f.iter().filter(|d| d.2 == c).map(move |d| (d.1, i, d.0))).collect();
        dets.sort_by(|a, b| b.0.total_cmp(&a.0));
        let gts: Vec<Vec<[f64; 4]>> = truth.iter().map(|t| t.iter().filter(|g| g.1 == c).map(|g| g.0).collect()).collect();
        let mut used: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.len()]).collect();
        let total: usize = gts.iter().map(Vec::len).sum();
        let (mut tp, mut fp, mut points) = (0.0, 0.0, vec![(0.0f64, 0.0f64)]);
        for (_, i, b) in dets {
            let best = gts[i].iter().enumerate().map(|(k, g)| (iou(b, *g), k)).fold((0.0, usize::MAX), |m, x| if x.0 > m.0 { x } else { m });
            if best.0 >= 0.5 && !used[i][best.1] {
                used[i][best.1] = true;
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            points.push((tp / total.max(1) as f64, tp / (tp + fp)));
        }
        points.push((1.0, 0.0));
        // The precision envelope, right to left, then the area under it.
        for k in (0..points.len() - 1).rev() {
            points[k].1 = points[k].1.max(points[k + 1].1);
        }
        aps.push(points.windows(2).map(|w| (w[1].0 - w[0].0) * w[1].1).sum::<f64>());
    }
    aps.iter().sum::<f64>() / aps.len() as f64
}

#[tokio::test]
async fn the_detector_over_http_matches_its_python_map_and_honours_its_parameters() {
    let scratch = Scratch::new();
    let (_host, gateway) = serve(&scratch, "shapes-detector").await;
    let client = reqwest::Client::new();
    let url = |query: &str| gateway.url(&format!("/v1/models/shapes-detector/predict{query}"));

    let scenes = testset("shapes-detector");
    let python = read_json(model_dir("shapes-detector").join("metrics.json"));
    let min_score = python["min_score"].as_f64().unwrap();
    let answers: Vec<Value> = futures::stream::iter(scenes.iter().map(|(png, _)| {
        let request = post(&client, url(&format!("?score_threshold={min_score}&max_detections=16")), png.clone(), None);
        async move {
            let response = request.await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    }))
    .buffered(4)
    .collect()
    .await;
    let mut found = Vec::new();
    let mut truth = Vec::new();
    for (answer, (_, t)) in answers.iter().zip(&scenes) {
        assert_eq!(answer["image"], json!({"width": t["width"], "height": t["height"]}), "{answer}");
        found.push(answer["detections"].as_array().unwrap().iter().map(|d| (corners(&d["box"]), d["score"].as_f64().unwrap(), d["index"].as_u64().unwrap())).collect());
        truth.push(t["boxes"].as_array().unwrap().iter().map(|b| (corners(&b["box"]), b["index"].as_u64().unwrap())).collect());
    }
    let http = mean_ap(&found, &truth, 3);
    let py = python["map50"].as_f64().unwrap();
    println!("shapes-detector mAP@0.5: HTTP {http:.4}, Python {py:.4} ({} scenes)", scenes.len());
    assert!((http - py).abs() <= 0.02 && http >= 0.88, "HTTP mAP@0.5 {http:.4} vs Python {py:.4}");

    // The model's defaults (score 0.3), then the request's.
    let png = &scenes[1].0;
    let default: Value = post(&client, url(""), png.clone(), None).await.json().await.unwrap();
    let scores = |v: &Value| -> Vec<f64> { v["detections"].as_array().unwrap().iter().map(|d| d["score"].as_f64().unwrap()).collect() };
    assert!(!scores(&default).is_empty() && scores(&default).iter().all(|&s| s >= 0.3), "{default}");
    assert!(scores(&default).windows(2).all(|w| w[0] >= w[1]), "best first: {default}");
    let one: Value = post(&client, url("?max_detections=1&score_threshold=0"), png.clone(), None).await.json().await.unwrap();
    assert_eq!(scores(&one).len(), 1);
    assert_eq!(scores(&one)[0], scores(&default)[0]);
    let all: Value = post(&client, url("?score_threshold=0"), png.clone(), None).await.json().await.unwrap();
    // Every row of the model but those that fall wholly in the padding.
    assert!((scores(&default).len()..=16).contains(&scores(&all).len()), "{all}");
    for (query, field) in [
        ("?score_threshold=1.5", "score_threshold"),
        ("?score_threshold=-0.1", "score_threshold"),
        ("?max_detections=0", "max_detections"),
        ("?max_detections=17", "max_detections"),
        ("?score_threshold=high", "score_threshold"),
        ("?format=png", "format"),
    ] {
        let (status, error) = error_of(post(&client, url(query), png.clone(), None).await).await;
        assert_eq!(status, 400, "{query}");
        assert!(error.contains(field), "{query}: {error}");
    }

    // A JPEG of the same scene: decoded at full size, the same objects.
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::load_from_memory(png).unwrap().write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let response = client.post(url("")).header("content-type", "image/jpeg").body(jpeg.into_inner()).send().await.unwrap();
    let from_jpeg: Value = response.json().await.unwrap();
    assert_eq!(from_jpeg["image"], default["image"]);
    let labels = |v: &Value| -> Vec<u64> { v["detections"].as_array().unwrap().iter().map(|d| d["index"].as_u64().unwrap()).collect() };
    assert_eq!(labels(&from_jpeg).len(), labels(&default).len(), "{from_jpeg} vs {default}");

    // v1 raw pixels and v2 tensors: the same 64x64 input, the same scores.
    let pixels = image::load_from_memory(png).unwrap().resize_exact(64, 64, image::imageops::FilterType::Triangle).into_rgb8().into_raw();
    let v1: Value = client
        .post(url("?score_threshold=0"))
        .header("content-type", "application/x-pixels")
        .body(pixels.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["image"], json!({"width": 64, "height": 64}));
    let body = json!({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 64, 64, 3], "data": pixels}]});
    let v2: Value = client.post(gateway.url("/v2/models/shapes-detector/infer")).json(&body).send().await.unwrap().json().await.unwrap();
    let outputs = v2["outputs"].as_array().unwrap_or_else(|| panic!("{v2}"));
    let shapes: Vec<(&str, &Value)> = outputs.iter().map(|o| (o["name"].as_str().unwrap(), &o["shape"])).collect();
    assert_eq!(shapes, [("boxes", &json!([1, 16, 4])), ("scores", &json!([1, 16])), ("labels", &json!([1, 16]))]);
    let mut v2_scores: Vec<f64> = outputs[1]["data"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    v2_scores.sort_by(|a, b| b.total_cmp(a));
    for (a, b) in scores(&v1).iter().zip(&v2_scores).take(3) {
        assert!((a - b).abs() < 1e-5, "v1 {a} vs v2 {b}");
    }

    let meta: Value = client.get(gateway.url("/v1/models/shapes-detector")).send().await.unwrap().json().await.unwrap();
    assert_eq!((meta["kind"].as_str(), meta["resize"].as_str(), &meta["max_boxes"]), (Some("detection"), Some("letterbox"), &json!(16)));
}

/// (intersection, union) per class (background, shape) of two 0/255 masks.
fn add_iou(acc: &mut [(u64, u64); 2], pred: &[bool], truth: &[bool]) {
    for (&p, &t) in pred.iter().zip(truth) {
        for (c, (pc, tc)) in [(!p, !t), (p, t)].into_iter().enumerate() {
            acc[c].0 += u64::from(pc && tc);
            acc[c].1 += u64::from(pc || tc);
        }
    }
}

#[tokio::test]
async fn the_segmenter_over_http_matches_its_python_iou_in_every_format() {
    let scratch = Scratch::new();
    let (_host, gateway) = serve(&scratch, "shapes-segmenter").await;
    let client = reqwest::Client::new();
    let url = |query: &str| gateway.url(&format!("/v1/models/shapes-segmenter/predict{query}"));
    let dir = model_dir("shapes-segmenter").join("testset");

    let scenes = testset("shapes-segmenter");
    let masks: Vec<Vec<u8>> = futures::stream::iter(scenes.iter().map(|(png, _)| {
        let request = post(&client, url("?format=png"), png.clone(), None);
        async move {
            let response = request.await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "image/png");
            response.bytes().await.unwrap().to_vec()
        }
    }))
    .buffered(4)
    .collect()
    .await;
    let mut acc = [(0u64, 0u64); 2];
    for (mask, (_, t)) in masks.iter().zip(&scenes) {
        let got = image::load_from_memory(mask).unwrap().into_luma8();
        assert_eq!((u64::from(got.width()), u64::from(got.height())), (t["width"].as_u64().unwrap(), t["height"].as_u64().unwrap()));
        let want = image::open(dir.join(t["mask"].as_str().unwrap())).unwrap().into_luma8();
        let pred: Vec<bool> = got.pixels().map(|p| p[0] >= 128).collect();
        let truth: Vec<bool> = want.pixels().map(|p| p[0] >= 128).collect();
        add_iou(&mut acc, &pred, &truth);
    }
    let http = acc.iter().map(|(i, u)| *i as f64 / *u as f64).sum::<f64>() / 2.0;
    let py = read_json(model_dir("shapes-segmenter").join("metrics.json"))["mean_iou"].as_f64().unwrap();
    println!("shapes-segmenter mean IoU: HTTP {http:.4}, Python {py:.4} ({} scenes)", scenes.len());
    assert!((http - py).abs() <= 0.02 && http >= 0.88, "HTTP mean IoU {http:.4} vs Python {py:.4}");

    // One scene in every format: the alpha, the cut-out, the counts. Each
    // asked alone, one after another: an image batched with others may
    // come out a rounding apart from the same image alone (other batch
    // shapes take other CPU kernel paths, which sum in another order), and
    // one unit of alpha at the mask's size spreads over the pixels it
    // covers at the photo's. Alone, every answer rides a batch of one.
    let (png, t) = &scenes[1];
    let (w, h) = (t["width"].as_u64().unwrap() as u32, t["height"].as_u64().unwrap() as u32);
    let alpha_png = post(&client, url("?format=png"), png.clone(), None).await.bytes().await.unwrap().to_vec();
    let alpha = image::load_from_memory(&alpha_png).unwrap().into_luma8();
    let response = post(&client, url("?format=cutout"), png.clone(), None).await;
    assert_eq!(response.headers()["content-type"], "image/png");
    let cutout = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(cutout.color(), image::ColorType::Rgba8, "an RGBA PNG");
    let cutout = cutout.into_rgba8();
    let original = image::load_from_memory(png).unwrap().into_rgb8();
    assert_eq!(cutout.dimensions(), (w, h));
    for ((c, o), a) in cutout.pixels().zip(original.pixels()).zip(alpha.pixels()) {
        assert_eq!((&c.0[..3], c.0[3]), (&o.0[..], a.0[0]));
    }
    let counts: Value = post(&client, url("?format=json"), png.clone(), None).await.json().await.unwrap();
    let shape = &counts["classes"][1];
    assert_eq!((shape["label"].as_str(), &counts["image"]), (Some("shape"), &json!({"width": w, "height": h})), "{counts}");
    let foreground = alpha.pixels().filter(|p| p[0] >= 128).count() as u64;
    assert_eq!(shape["pixels"].as_u64().unwrap(), foreground);
    assert_eq!(counts["classes"][0]["pixels"].as_u64().unwrap() + foreground, u64::from(w * h));
    assert!(counts["timings_ms"]["total"].as_f64().is_some(), "{counts}");

    // Accept decides when ?format= does not; an unknown format is named.
    let by_accept = post(&client, url(""), png.clone(), Some("image/png")).await;
    assert_eq!(by_accept.headers()["content-type"], "image/png");
    assert_eq!(by_accept.bytes().await.unwrap().to_vec(), alpha_png, "Accept: image/png answers what ?format=png does");
    let json_accept = post(&client, url(""), png.clone(), Some("application/json")).await;
    assert!(json_accept.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let (status, error) = error_of(post(&client, url("?format=bmp"), png.clone(), None).await).await;
    assert_eq!(status, 400);
    assert!(error.contains("format") && error.contains("cutout"), "{error}");

    // A huge image is refused from its header, before any pixel (or mask) memory.
    let mut huge = masks[1].clone();
    huge[16..24].copy_from_slice(&[0, 0, 0xc3, 0x50, 0, 0, 0xc3, 0x50]); // 50000 x 50000
    let crc = crc32fast::hash(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let response = post(&client, url("?format=cutout"), huge, None).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.json::<Value>().await.unwrap()["type"], "image_too_large");
    // Raw pixels of the wrong length are named.
    let (status, error) = error_of(client.post(url("")).header("content-type", "application/x-pixels").body(vec![0u8; 10]).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(error.contains("12288"), "{error}");

    // Over v2: the PNG as BYTES (stretched to 64x64 as the model expects), the raw mask back.
    let element = [&(png.len() as u32).to_le_bytes()[..], png].concat();
    let header = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": element.len()}}]}).to_string();
    let response = client
        .post(gateway.url("/v2/models/shapes-segmenter/infer"))
        .header("inference-header-content-length", header.len().to_string())
        .body([header.as_bytes(), &element].concat())
        .send()
        .await
        .unwrap();
    let v2: Value = response.json().await.unwrap();
    assert_eq!(v2["outputs"][0]["shape"], json!([1, 1, 64, 64]), "{v2}");
    let values = v2["outputs"][0]["data"].as_array().unwrap();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
    assert!(values.iter().any(|v| v.as_f64().unwrap() > 0.5), "the scene has a shape");
}

/// A model.toml whose outputs do not match what the model returns is
/// refused at start, naming the output and model.toml's declaration.
#[test]
fn a_config_that_does_not_match_the_model_is_refused_at_start() {
    for (model, from, to, named) in [
        ("shapes-detector", "max_boxes = 16", "max_boxes = 10", ["\"boxes\"", "detection.max_boxes"]),
        ("shapes-segmenter", "mask = \"alpha\"", "mask = \"classes\"", ["\"mask\"", "segmentation.mask"]),
    ] {
        let scratch = Scratch::new();
        let dir = model_dir(model);
        let text = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        assert!(text.contains(from), "{model}'s model.toml has no {from}");
        let text = text.replace(from, to).replace("max_detections = 16", "max_detections = 10").replace("file = \"model.pt\"", &format!("file = {:?}", dir.join("model.pt")));
        let config = scratch.dir.path().join("model.toml");
        std::fs::write(&config, text).unwrap();
        let mut host = scratch.start_host(&["--model", config.to_str().unwrap()]);
        let code = host.wait_exit(Duration::from_secs(120));
        assert!(matches!(code, Some(c) if c != 0), "{model} with {to}: exit code {code:?}:\n{}", host.log());
        assert!(named.iter().all(|n| host.log().contains(n)), "{model}: the error names {named:?}:\n{}", host.log());
    }
}
