// V8 internals (see v8_bridge.h): throwing from a V8 callback, and exporting one.

#include "v8_bridge.h"

namespace vhostfwd {

void ThrowV8Type(v8::Isolate* isolate, const char* what) {
  v8::Local<v8::Value> e = v8::Exception::TypeError(v8::String::NewFromUtf8(isolate, what).ToLocalChecked());
  v8::Local<v8::Context> context = isolate->GetCurrentContext();
  e.As<v8::Object>()->Set(context, v8::String::NewFromUtf8Literal(isolate, "code"), v8::String::NewFromUtf8Literal(isolate, "ERR_INVALID_ARG_TYPE")).Check();
  isolate->ThrowException(e);
}

// Exported like the N-API functions; a napi_value is the Local's slot pointer
// (NapiValueFromV8Local, v8_bridge.h).
void SetV8Function(Napi::Env env, Napi::Object exports, const char* name, v8::FunctionCallback fn) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::Local<v8::Function> f = v8::Function::New(isolate->GetCurrentContext(), fn).ToLocalChecked();
  f->SetName(v8::String::NewFromUtf8(isolate, name).ToLocalChecked());
  exports.Set(name, Napi::Value(env, NapiValueFromV8Local(f)));
}

}  // namespace vhostfwd
