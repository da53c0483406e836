use burn::tensor::{DType, Device};
use echovlm_core::LinearWeight;
use echovlm_pipeline::{EchoVlm, LoadOptions, Request};

#[test]
fn gradients_reach_the_coefficient() {
    let dev = Device::flex().autodiff();
    let opts = LoadOptions::default().device(dev).dtype(DType::F32);
    let mut model = EchoVlm::load("../fixtures/models/tiny-echovlm", &opts).unwrap();
    let coef = &mut model.text_model_mut().layers[0];
    let echovlm_text::FeedForward::Dynamic(ffn) = &mut coef.ffn else { panic!() };
    let w = match &ffn.coefficient.weight { LinearWeight::Tensor(t) => t.clone(), _ => panic!("packed") };
    let w = w.require_grad();
    ffn.coefficient.weight = LinearWeight::Tensor(w.clone());
    let g = match &ffn.moe.gate.weight { LinearWeight::Tensor(t) => t.clone(), _ => panic!("packed") };
    let g = g.require_grad();
    ffn.moe.gate.weight = LinearWeight::Tensor(g.clone());
    let p = model.prepare(&Request::new("Describe the liver.").image("../fixtures/images/liver_182x238.png")).unwrap();
    let t = std::time::Instant::now();
    let out = model.forward_sequences(&[p]).unwrap();
    let loss = out.logits.sum() + echovlm_moe::load_balancing_loss(&out.router_logits, 2, None);
    let grads = loss.backward();
    eprintln!("fwd+bwd {:?}", t.elapsed());
    let gw = w.grad(&grads).expect("coefficient grad");
    let gg = g.grad(&grads).expect("router grad");
    eprintln!("{:?}", gw.into_data());
    eprintln!("{:?}", gg.into_data());
}
